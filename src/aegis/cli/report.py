"""``aegis report``: rebuild a run's HTML report from its ``results.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aegis.cli.options import MlflowExperiment, MlflowUri
from aegis.cli.run_dir import track, wanted


def report(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A run directory written by aegis (attack, defend, detect, certify, ...), or "
            "its results.json.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Where to write the page (default: RUN_DIR/report.html)."),
    ] = None,
    open_page: Annotated[
        bool, typer.Option("--open", help="Open the page in the default web browser.")
    ] = False,
    mlflow: Annotated[
        bool,
        typer.Option(
            "--mlflow",
            help="Also log the finished run to MLflow, from its results.json alone (nothing is "
            "recomputed): params, figures as metrics, tags, and results.json, report.html and "
            "the pictures as artifacts; the run id goes to RUN_DIR/mlflow.json. An audit gets "
            "a child run per evaluation. Needs aegis-robust[mlflow].",
        ),
    ] = False,
    mlflow_uri: MlflowUri = None,
    mlflow_experiment: MlflowExperiment = None,
) -> None:
    """Write the HTML report of a run from its results.json alone (nothing is recomputed).

    The page is one self-contained file that reads offline: the verdict (SUSPICIOUS, with
    the evidence, whenever a sanity check raised a warning sign of gradient masking), the
    accuracy-vs-ε curve, per-class precision/recall/F1 clean and under attack, confusion
    matrices, a gallery of original / perturbation / adversarial images with labels and
    confidences, minimal-norm distributions, defense comparisons, detection and
    certification results, and the full provenance: versions, seed and every
    hyper-parameter. Results of any other kind are shown as tables of their sections.

    Every `aegis attack`, `defend`, `detect` and `certify` run already writes report.html;
    run this to rebuild it (e.g. after upgrading aegis) or to write it elsewhere:

        aegis report runs/demo-targeted

        aegis report runs/demo-targeted/results.json --out /tmp/targeted.html --open

    A run made without --mlflow can be logged to an MLflow tracking store afterwards:

        aegis report runs/demo-targeted --mlflow --mlflow-uri sqlite:///mlflow.db
    """
    import webbrowser

    from aegis.report.html import write_report

    path = write_report(run_dir, out)
    typer.echo(f"report: {path}")
    if wanted(mlflow, mlflow_uri, mlflow_experiment):
        track(run_dir.parent if run_dir.is_file() else run_dir, mlflow_uri, mlflow_experiment)
    if open_page:
        webbrowser.open(path.resolve().as_uri())
