"""The ``--mlflow`` options of every command that writes a run directory, and the one call
they make once it is written (the work is in :mod:`aegis.report.tracking`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Mlflow = Annotated[
    bool,
    typer.Option(
        "--mlflow",
        help="Once the run directory is written, log it to MLflow: params (config, model, "
        "data, seed), every figure of results.json as a metric, tags (aegis version, "
        "command, verdict) and results.json, report.html and the pictures as artifacts. The "
        "run id goes to OUT/mlflow.json. Needs aegis-robust[mlflow].",
    ),
]
MlflowUri = Annotated[
    str | None,
    typer.Option(
        "--mlflow-uri",
        metavar="URI",
        help="Tracking store for --mlflow (implies it): sqlite:///PATH.db, http(s)://SERVER, "
        "... Default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current folder "
        "(artifacts in ./mlruns), which `mlflow ui` started there shows.",
    ),
]
MlflowExperiment = Annotated[
    str | None,
    typer.Option(
        "--mlflow-experiment",
        metavar="NAME",
        help="MLflow experiment for --mlflow (implies it), created when missing. Default: aegis.",
    ),
]


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
