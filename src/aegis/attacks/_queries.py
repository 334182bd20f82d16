"""Chunk sizes for the black-box attacks' batched queries (written once).

Score- and decision-based attacks evaluate many perturbed copies of each point at once; they send
them to the model in chunks so that no single forward holds more than ``MAX_ROWS`` inputs or
``MAX_ELEMENTS`` values, and pass the row of the original point for every copy, so the
Classifier counts each copy as one query of that point.
"""

from __future__ import annotations

from torch import Tensor

MAX_ROWS = 8192  # inputs per forward call
MAX_ELEMENTS = 2**24  # values per forward call (64 MiB of float32)


def rows_per_call(x: Tensor) -> int:
    """How many inputs shaped like one row of ``x`` one forward call may hold."""
    per_row = max(1, x[0].numel()) if x.shape[0] else 1
    return max(1, min(MAX_ROWS, MAX_ELEMENTS // per_row))
