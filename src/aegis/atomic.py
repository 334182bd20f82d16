"""Files written whole or not at all, and write failures told as one line with the fix.

Every file aegis writes (results, reports, pictures, checkpointed batches) goes to a temporary
name beside its destination and is renamed over it once complete. :func:`atomic` removes the
temporary file on every failure path (a full disk, a read-only file system, an interrupt), so
nothing half-written is left behind, and turns the operating system's error into an
:class:`~aegis.errors.AegisError` that says what to do.

    >>> with atomic(out / "results.json") as tmp:
    ...     tmp.write_text(text)
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from aegis.errors import AegisError


@contextmanager
def atomic(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds,
    remove it when the block fails. ``suffix`` keeps an extension a writer needs (``.tmp.png``
    for matplotlib)."""
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise


def write_error(path: Path, exc: OSError) -> AegisError:
    """One line for a failed write: the path, the cause and the fix."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space or choose another --out"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "choose a writable --out directory"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = "a file stands where aegis needs a directory; choose another --out"
    else:
        fix = "check --out"
    return AegisError(f"cannot write {path} ({reason}); {fix}")
