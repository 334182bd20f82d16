"""One run per run directory, and no run's work lost or mixed with another's.

A run claims its ``--out`` directory before it computes anything:

- a lock file (``.aegis.lock``, holding the owner's PID, host and command) keeps a second run
  out; the second run stops with one line naming the first. A lock whose process is gone (a
  killed run) is taken over;
- checkpointed batches of an unfinished run (``progress/``) are never deleted silently: the run
  continues them with ``resume``, or starts over with ``overwrite``, or refuses;
- a finished run (``results.json``) is replaced only with ``overwrite``, which first removes
  every file the old run wrote, so no stale picture stays beside the new results.

Only files aegis writes are removed: the names a run's ``results.json`` lists, the fixed names
of a run directory, temporary leftovers, and sub-directories that are themselves run
directories (an audit's evaluations). Anything else in the directory is left alone.

    >>> with claimed(Path("runs/pgd"), resume=False, overwrite=True) as out_dir:
    ...     ...  # compute, then write into out_dir
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aegis.atomic import write_error
from aegis.errors import AegisError
from aegis.io.rundir import prepare

LOCK = ".aegis.lock"
LOG = "aegis.log"  # what the run logged, other libraries' warnings included
PROGRESS = "progress"
AUDIT_STATE = "resume.json"  # an audit's finished evaluations
RUN_FILES = (
    "results.json",
    "report.html",
    "samples.npz",
    "grid.png",
    "curve.png",
    "mlflow.json",
    LOG,
    "resume.json",
)
"""Names a run directory may hold whatever its kind (more are listed in ``results.json``)."""


@contextmanager
def claimed(out: Path, *, resume: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Claim ``out`` for this run (see the module doc) and release it when the block ends."""
    created = not out.exists()
    lock = claim(out, resume=resume, overwrite=overwrite)
    handler = logging.FileHandler(out / LOG, encoding="utf-8", delay=True)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield out
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        release(lock)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # the run failed before writing anything: leave no empty folder


def claim(out: Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Create ``out`` if needed, take its lock and settle what an earlier run left; returns
    the lock file, for :func:`release`."""
    prepare(out)
    lock = _take_lock(out)
    try:
        _settle(out, resume=resume, overwrite=overwrite)
    except BaseException:
        release(lock)
        raise
    return lock


def release(lock: Path) -> None:
    """Remove ``lock`` if this process still owns it."""
    if _owner(lock).get("pid") == os.getpid():
        lock.unlink(missing_ok=True)


def has_checkpoints(out: Path) -> bool:
    """Whether ``out`` holds the saved work of an unfinished run: checkpointed batches (its
    own, or an audit evaluation's one level down), or an unfinished audit's ``resume.json``."""
    if (out / AUDIT_STATE).is_file() and not (out / "results.json").is_file():
        return True
    folders = [out / PROGRESS, *(sub / PROGRESS for sub in out.iterdir() if sub.is_dir())]
    return any(f.is_dir() and any(p.is_file() for p in f.rglob("*.npz")) for f in folders)


def _settle(out: Path, *, resume: bool, overwrite: bool) -> None:
    if overwrite:
        clear_run(out)
        return
    if has_checkpoints(out) and not resume:
        raise AegisError(
            f"{out} holds the checkpointed batches of an unfinished run; pass --resume to "
            "continue it, or --overwrite to discard them and start over"
        )
    if (out / "results.json").is_file():
        if not resume:
            raise AegisError(
                f"{out} already holds a finished run (results.json); pass --overwrite to "
                "replace it, or choose another --out"
            )
        clear_run(out, keep_work=True)  # resumed: its new files replace every old one
    _remove_leftovers(out)


def clear_run(out: Path, *, keep_work: bool = False) -> None:
    """Remove every file an earlier aegis run wrote in ``out`` (nothing else); ``keep_work``
    keeps what a resumed run reads back: its checkpointed batches and the sub-directories of
    its finished parts (an audit's evaluations)."""
    names = set(RUN_FILES) | _listed_files(out / "results.json")
    if keep_work:
        names -= {AUDIT_STATE, LOG}
    try:
        for name in names:
            path = out / name
            if path.is_file() or path.is_symlink():
                path.unlink()
        if keep_work:
            return _remove_leftovers(out)
        if (out / PROGRESS).is_dir():
            shutil.rmtree(out / PROGRESS)
        for sub in out.iterdir():
            if sub.is_dir() and not sub.is_symlink() and _is_run_dir(sub):
                clear_run(sub)
                _rmdir_if_empty(sub)
    except OSError as exc:
        raise write_error(out, exc) from exc
    _remove_leftovers(out)


def _listed_files(results: Path) -> set[str]:
    """The plain file names a finished run's ``results.json`` lists under ``files``."""
    try:
        files = json.loads(results.read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return set()
    if not isinstance(files, dict):
        return set()
    return {v for v in files.values() if isinstance(v, str) and v and Path(v).name == v != ".."}


def _is_run_dir(path: Path) -> bool:
    return (path / "results.json").is_file() or (path / PROGRESS).is_dir()


def _rmdir_if_empty(path: Path) -> None:
    lock = path / LOCK
    if lock.is_file() and not _alive(_owner(lock)):
        lock.unlink()
    if not any(path.iterdir()):
        path.rmdir()


def _remove_leftovers(out: Path) -> None:
    """Temporary files a run killed mid-write left behind."""
    for path in out.glob("*.tmp*"):
        if path.is_file():
            path.unlink(missing_ok=True)


# -- the lock ---------------------------------------------------------------------------------


def _take_lock(out: Path) -> Path:
    lock = out / LOCK
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv)[:300],
    }
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(lock)
            if _alive(owner, lock):
                raise AegisError(_busy(out, owner)) from None
            lock.unlink(missing_ok=True)  # its run is gone (killed): take the lock over
            continue
        except OSError as exc:
            raise write_error(lock, exc) from exc
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
        return lock
    raise AegisError(f"cannot take the lock {lock}: other runs keep taking it; retry")


def _owner(lock: Path) -> dict[str, object]:
    try:
        data = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _alive(owner: dict[str, object], lock: Path | None = None) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return lock is not None and _recent(lock)  # half-written just now, or long dead
    if owner.get("host") != socket.gethostname():
        return True  # another machine's run on a shared disk: assume it is running
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _recent(lock: Path, seconds: float = 10.0) -> bool:
    try:
        return time.time() - lock.stat().st_mtime < seconds
    except OSError:
        return False


def _busy(out: Path, owner: dict[str, object]) -> str:
    host = owner.get("host")
    where = f" on {host}" if host != socket.gethostname() else ""
    since = f", started {owner['started']}" if owner.get("started") else ""
    return (
        f"{out} is in use by another aegis run (PID {owner.get('pid')}{where}{since}); wait "
        f"for it to finish or choose another --out (if that run is dead, delete {out / LOCK})"
    )
