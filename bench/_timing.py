"""What the benchmarks share: median wall times, timed in turns (imported as ``_timing`` by
the scripts in this folder, which run with it on ``sys.path``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function, timed in turns so that drifts hit all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
