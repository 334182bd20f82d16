"""What an executor runs: a ``Batch`` of an evaluation, the ``BatchWork`` that attacks it, and
the ``Finished`` result it yields back. The engine builds them; executors only move them, so
the dependency runs engine → executors (the engine's per-batch function travels inside
``BatchWork`` as a callable)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from torch import Tensor

    from aegis.model import Classifier
    from aegis.records import Records
    from aegis.threat import ThreatModel

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
    """A batch's records (``index`` and ``seconds`` filled in) and adversarial inputs."""

    start: int
    records: Records
    x_adv: np.ndarray


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

    def __call__(self, model: Classifier, batch: Batch) -> Finished:
        """Attack ``batch`` on ``model``'s device; the result is back on the CPU."""
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
