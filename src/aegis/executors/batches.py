"""What an executor runs: a ``Batch`` of an evaluation, the ``BatchWork`` that attacks it, and
the ``Finished`` result it yields back. The engine builds them; executors only move them, so
the dependency runs engine → executors (the engine's per-batch function travels inside
``BatchWork`` as a callable)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from aegis.errors import AegisError
from aegis.executors.memory import is_out_of_memory, release_memory
from aegis.records import Records

if TYPE_CHECKING:
    from torch import Tensor

    from aegis.model import Classifier
    from aegis.threat import ThreatModel

log = logging.getLogger(__name__)

RunBatch = Callable[
    [
        "Classifier",
        "Tensor",
        "Tensor",
        "Tensor | None",
        "list[Any]",
        "ThreatModel",
        int,
        int,
        bool,
    ],
    "tuple[Records, Tensor]",
]
"""The engine's per-batch function: (model, x, y, targets, attacks, threat, seed, start,
attack_misclassified) → (records, x_adv), all on the model's device."""


@dataclass(frozen=True)
class Batch:
    """One batch of an evaluation: its first index and its rows (on the CPU, as given)."""

    start: int
    x: Tensor
    y: Tensor
    targets: Tensor | None


@dataclass(frozen=True)
class Finished:
    """A batch's records (``index`` and ``seconds`` filled in) and adversarial inputs, and the
    out-of-memory retries it took (each: first index, size that failed, size retried)."""

    start: int
    records: Records
    x_adv: np.ndarray
    retries: tuple[dict[str, int], ...] = ()


@dataclass(frozen=True)
class BatchWork:
    """What every batch of one evaluation runs: the attacks, the threat, the run seed and the
    engine's per-batch function (a module-level function). Small and picklable, so an executor
    can send it to other processes with the batches."""

    attacks: tuple[Any, ...]  # the engine's Attack objects (executors sit below attacks)
    threat: ThreatModel
    seed: int
    attack_misclassified: bool
    run_batch: RunBatch

    cap: list[int] = field(default_factory=lambda: [0], compare=False)
    """The batch size an out-of-memory error brought this work down to (0: none yet)."""

    def __call__(self, model: Classifier, batch: Batch) -> Finished:
        """Attack ``batch`` on ``model``'s device; the result is back on the CPU. A batch that
        runs out of memory is attacked again as two halves, each with the seed of its first
        index (so as a run started at that size would attack them), and every later batch of
        this work in pieces of that size; ``Finished.retries`` records each halving."""
        retries: list[dict[str, int]] = []
        parts = self._attack(model, batch, retries)
        if len(parts) == 1:
            return replace(parts[0], retries=tuple(retries))
        records = Records.concat([p.records for p in parts])
        x_adv = np.concatenate([p.x_adv for p in parts])
        return Finished(batch.start, records, x_adv, tuple(retries))

    def _attack(
        self, model: Classifier, batch: Batch, retries: list[dict[str, int]]
    ) -> list[Finished]:
        m, cap = batch.y.shape[0], self.cap[0]
        if cap and m > cap:
            return [
                part
                for i in range(0, m, cap)
                for part in self._attack(model, _rows(batch, i, i + cap), retries)
            ]
        try:
            return [self._once(model, batch)]
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            if m == 1:
                raise AegisError(
                    f"out of memory on {model.device} with one point a batch "
                    f"({str(exc).splitlines()[0][:120]}); free memory or use a larger device"
                ) from None
        release_memory(model.device)  # outside the handler: the traceback holds the batch
        self.cap[0] = (m + 1) // 2
        retries.append({"start": batch.start, "size": m, "retry_size": self.cap[0]})
        log.warning(
            "out of memory on a batch of %d at index %d; attacking it in halves of %d",
            m,
            batch.start,
            self.cap[0],
        )
        return self._attack(model, batch, retries)

    def _once(self, model: Classifier, batch: Batch) -> Finished:
        t0 = time.perf_counter()
        xb = batch.x.to(model.device, torch.float32)
        yb = batch.y.to(model.device)
        tb = None if batch.targets is None else batch.targets.to(model.device)
        rec, xb_adv = self.run_batch(
            model,
            xb,
            yb,
            tb,
            list(self.attacks),
            self.threat,
            self.seed,
            batch.start,
            self.attack_misclassified,
        )
        m = xb.shape[0]
        rec.index = np.arange(batch.start, batch.start + m)
        rec.seconds = np.full(m, (time.perf_counter() - t0) / m)
        return Finished(batch.start, rec, xb_adv.cpu().numpy())


def _rows(batch: Batch, i: int, j: int) -> Batch:
    """Rows ``i:j`` of ``batch`` as a batch of their own."""
    targets = None if batch.targets is None else batch.targets[i:j]
    return Batch(batch.start + i, batch.x[i:j], batch.y[i:j], targets)
