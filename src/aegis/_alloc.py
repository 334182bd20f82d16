"""CPU allocator tuning for the many same-sized temporaries of an attack loop.

Each forward and backward pass of an attack allocates and frees the same feature maps (on the
reference MNIST CNN, 7 MB each). glibc serves blocks that large with ``mmap`` and gives them back
with ``munmap`` as soon as they are freed, so every pass pays the kernel for fresh zeroed pages;
on the reference CNN that is about a quarter of a gradient call's time. ``keep_freed_memory``
raises glibc's mmap threshold to its maximum (32 MiB on 64-bit) and stops it from trimming the
heap, so freed blocks are reused, the effect that PyTorch's CPU tuning guide gets by preloading
jemalloc or tcmalloc. The price: the process keeps the memory of its largest batch until it
exits. It applies to the whole process, once, where the C library is glibc; ``engine.evaluate``
calls it; ``AEGIS_MALLOC=system`` leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_SETTINGS = (
    (_M_MMAP_THRESHOLD, 32 * 1024 * 1024),
    (_M_TRIM_THRESHOLD, 2**31 - 1),
    (_M_TOP_PAD, 64 * 1024 * 1024),
)

_state: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module docstring says (once per process); whether it is."""
    global _state
    if _state is not None:
        return _state
    _state = False
    if os.environ.get("AEGIS_MALLOC") == "system":
        return False
    try:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
        if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
            return False  # not glibc (musl, macOS, Windows): nothing to tune
        _state = all(mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in _SETTINGS)
    except OSError as exc:
        log.debug("allocator left as it is (%s)", exc)
    log.debug("glibc malloc keeps freed memory: %s", _state)
    return _state
