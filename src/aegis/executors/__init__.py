"""Where the engine's batches run: in this process (``local``) or on Ray workers (``ray``).

An executor gets the batches of one evaluation that still need attacking and yields each one's
result as it finishes, in any order. The engine writes each to the checkpoint as it arrives,
advances the progress bar, and puts them back in batch order. Every batch draws from its own
seed (``engine.batch_seed``), so the records never depend on the executor (timings aside).

    >>> from aegis.executors import create_executor
    >>> evaluate(model, x, y, attack, threat, executor=create_executor("ray", workers=4))
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from aegis.errors import ConfigError
from aegis.executors.batches import Batch, BatchWork, Finished, RunBatch

if TYPE_CHECKING:
    from torch import Tensor

    from aegis.model import Classifier

EXECUTORS = ("local", "ray")
"""The executor names of the CLI (``--executor``), the API and the audit config."""


class Executor(ABC):
    """Runs the batches of an evaluation and yields their results as they finish."""

    name: ClassVar[str]

    @abstractmethod
    def run(
        self,
        model: Classifier,
        work: BatchWork,
        batches: Sequence[Batch],
        *,
        warmup: Tensor | None,
    ) -> Iterator[Finished]:
        """Attack every batch with ``work`` on ``model``; yield each result once, in any order.

        ``warmup`` is the batch the engine prepared ``model``'s frozen inference copy on (None
        if it did not): a worker holding its own copy of the model prepares it the same way,
        so every batch takes the path the local run takes."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What ``results.json`` records under ``config.executor``."""


class LocalExecutor(Executor):
    """Every batch in this process, one after the other, in batch order (the default)."""

    name = "local"

    def run(
        self,
        model: Classifier,
        work: BatchWork,
        batches: Sequence[Batch],
        *,
        warmup: Tensor | None,
    ) -> Iterator[Finished]:
        for batch in batches:
            yield work(model, batch)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "workers": 1}


def create_executor(
    name: str = "local", *, workers: int | None = None, address: str | None = None
) -> Executor:
    """An executor by name. ``workers`` and ``address`` (an existing Ray cluster) are Ray's:
    the local executor refuses them rather than ignore them."""
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if name == "local":
        if workers is not None or address is not None:
            raise ConfigError(
                "--workers and --ray-address set up Ray workers; add --executor ray "
                "(or drop them for the local executor)"
            )
        return LocalExecutor()
    from aegis.executors.distributed import RayExecutor

    return RayExecutor(workers=workers, address=address)


__all__ = [
    "EXECUTORS",
    "Batch",
    "BatchWork",
    "Executor",
    "Finished",
    "LocalExecutor",
    "RunBatch",
    "create_executor",
]
