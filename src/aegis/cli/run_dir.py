"""The run directory a command writes, its progress bar and its MLflow logging: one helper
for every command that writes a run directory (the work is in :mod:`aegis.io.claim`,
:mod:`aegis.progress` and :mod:`aegis.report.tracking`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer


def wanted(enabled: bool | None, uri: str | None, experiment: str | None) -> bool:
    """Whether to log: ``--mlflow``, or a store or experiment named for it."""
    return bool(enabled) or uri is not None or experiment is not None


def track(out_dir: str | Path, uri: str | None, experiment: str | None) -> str:
    """Log the finished run directory ``out_dir`` and say where it went; return the run id."""
    from aegis.report.tracking import DEFAULT_EXPERIMENT, RECORD, log_run, shown_uri, store_uri

    name = experiment or DEFAULT_EXPERIMENT
    run_id = log_run(out_dir, uri=uri, experiment=name)
    typer.echo(
        f"mlflow: run {run_id} in experiment {name!r} at {shown_uri(store_uri(uri))} "
        f"(id in {Path(out_dir) / RECORD})"
    )
    return run_id


class Bar:
    """The progress bar of a run, shown on a terminal only; started when the work is known."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None

    def start(self, description: str, total: int | None = None) -> None:
        from aegis.progress import progress_bar

        self._bar = progress_bar(enabled=sys.stderr.isatty())
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def update(self, done: int, total: int) -> None:
        """The ``progress(done, total)`` callback the Python API takes."""
        self._bar.update(self._task, completed=done, total=total)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@dataclass(frozen=True)
class RunDir:
    """Where a command writes its run (``--out``, default ``runs/<time>-<name>``), whether it
    may replace an earlier one (``--overwrite``) and whether to log it (``--mlflow*``)."""

    out_dir: Path
    overwrite: bool = False
    mlflow: bool | None = False
    mlflow_uri: str | None = None
    mlflow_experiment: str | None = None

    @classmethod
    def of(
        cls,
        out: Path | None,
        name: str,
        *,
        overwrite: bool = False,
        mlflow: bool | None = False,
        mlflow_uri: str | None = None,
        mlflow_experiment: str | None = None,
    ) -> RunDir:
        from aegis.io import rundir

        out_dir = out if out is not None else rundir.default_run_dir(Path("runs"), name)
        return cls(out_dir, overwrite, mlflow, mlflow_uri, mlflow_experiment)

    @contextmanager
    def writing(self, task: str | None = None, *, claim: bool = True) -> Iterator[Bar]:
        """Hold the run directory (unless the API claims it itself) and a progress bar,
        started at once on ``task``, else by the command; both are released at the end."""
        from aegis.io.claim import claimed

        bar = Bar()
        with claimed(Path(self.out_dir), overwrite=self.overwrite) if claim else _nothing():
            try:
                if task is not None:
                    bar.start(task)
                yield bar
            finally:
                bar.stop()

    def track(self, written: str | Path) -> None:
        """Log the finished run directory ``written`` to MLflow when it was asked for."""
        if wanted(self.mlflow, self.mlflow_uri, self.mlflow_experiment):
            track(written, self.mlflow_uri, self.mlflow_experiment)


@contextmanager
def _nothing() -> Iterator[None]:
    yield
