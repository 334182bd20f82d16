"""``aegis audit CONFIG``: the Typer command (thin; the work is in :mod:`aegis.workflows.audit`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from aegis.cli.options import EXIT_ERROR, EXIT_GATE, MlflowExperiment, MlflowUri, Overwrite
from aegis.cli.run_dir import track, wanted
from aegis.errors import ConfigError, UsageError

EXAMPLE = """\
# aegis audit config: `aegis audit audit.yaml` runs every evaluation below for every model
# into one run directory and exits 0 (all thresholds passed), 3 (a threshold failed: the CI
# gate) or 1 (an evaluation failed to run, or this file is invalid).
#
# EDIT ME: a model file (PyTorch, Keras, ONNX, safetensors + sidecar). A digits reference
# model is made in seconds by:
#   python -c "from aegis.zoo.train import train_reference as t; t('digits', out_dir='models')"
models:
  - models/digits_cnn.safetensors
data: digits          # a built-in dataset, .npy/.npz file or image folder
limit: 40             # evaluate the first 40 inputs (remove for all)
seed: 0
# out: runs/audit     # the run directory (default: runs/<time>-audit; --out overrides)
# mlflow: {uri: sqlite:///mlflow.db, experiment: aegis}   # log the finished audit to MLflow
# executor:           # where attack batches run: local (default) or ray (same records)
#   name: ray         # needs pip install 'aegis-robust[ray]'
#   workers: 4        # default: one per GPU, else one per CPU
#   address: auto     # an existing Ray cluster (default: a local Ray instance)

evaluations:
  # white-box robustness; eps may be one budget or a sweep (the largest is the headline)
  - type: attack
    attack: pgd       # an attack or suite: apgd-ce,apgd-t / standard
    norm: linf
    eps: [0.1, 0.3]
    params: {steps: 5}
    require:
      min_clean_accuracy: 0.9
      max_success_rate: 1.0        # thresholds: min_/max_ of the figures in the table
      # min_adversarial_accuracy: 0.5

  # a detector against the plain and the adaptive (detector-aware) attack
  - type: detect
    detector: mahalanobis
    eps: 0.3
    fit_limit: 200
    adaptive_steps: 5
    params: {steps: 5}
    require:
      max_clean_flagged: 0.2
      # min_detection_auc: 0.8     # AUC against the adaptive attack
      # min_robust_accuracy: 0.5

  # compare defenses: defended model files, preprocessing, detectors
  # - type: defend
  #   preprocess: ["bit-depth:bits=4"]
  #   attack: pgd
  #   eps: 0.3
  #   require: {min_adversarial_accuracy: 0.3}   # every defended row must reach it

  # randomized smoothing
  # - type: certify
  #   sigma: 0.25
  #   n0: 10
  #   n: 100
  #   radii: [0.0, 0.25, 0.5]
  #   require: {min_certified_accuracy: 0.3, radius: 0.25, max_abstain_rate: 0.5}

  # poisoning: trains its own models on the data's train split (runs once, not per model)
  # - type: poison
  #   attack: badnets
  #   rate: 0.1
  #   epochs: 2
  #   require: {max_cleaned_backdoor_success: 0.2}

  # model extraction (the attacker's best fidelity / transfer success over all budgets)
  # - type: extract
  #   budgets: [250]
  #   outputs: [labels]
  #   steps: 5
  #   transfer_limit: 20
  #   require: {max_extraction_fidelity: 0.99}

  # membership inference: trains its own targets (runs once, not per model)
  # - type: membership
  #   variants: [base]
  #   shadows: 1
  #   require: {max_membership_auc: 0.7}
"""


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.3g}"


def _print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="aegis audit", show_lines=False)
    for col in ("#", "evaluation", "model", "figures", "thresholds"):
        table.add_column(col)
    for e in results["evaluations"]:
        figures = ", ".join(f"{k} {_fmt(v)}" for k, v in e["figures"].items())
        if e["status"] == "error":
            figures, marks = f"error: {e['error']}", "FAILED TO RUN"
        else:
            marks = "; ".join(
                f"{'pass' if c['passed'] else 'FAIL'} {c['figure']} {_fmt(c['value'])} "
                f"{c['required']}"
                for c in e["checks"]
            )
        model = Path(e["model"]).name if e["model"] else "—"
        table.add_row(str(e["index"]), e["name"], model, figures, marks or "(none)")
    Console(width=160).print(table)
    verdict = "PASSED" if results["passed"] else "FAILED"
    typer.echo(f"audit {verdict}; results: {Path(results['out_dir']) / 'results.json'}")


def audit(
    config: Annotated[
        str,
        typer.Argument(
            help="The YAML audit config (with --example: where to write one, - for stdout)."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Run directory (default: config `out`, else runs/<time>-audit)."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted audit in its run directory (--out or the config's "
            "`out`): evaluations whose results are complete there, for the same settings, "
            "model, data and seed, are read back, not run again; an interrupted attack "
            "evaluation resumes from its finished batches. Same results.json as an "
            "uninterrupted audit, timings aside.",
        ),
    ] = False,
    overwrite: Overwrite = False,
    mlflow: Annotated[
        bool | None,
        typer.Option(
            "--mlflow/--no-mlflow",
            help="Log the finished audit to MLflow (one run, a child run per evaluation): "
            "params, figures as metrics, tags, results.json, report.html and pictures as "
            "artifacts; the run id goes to OUT/mlflow.json. Default: when the config has an "
            "`mlflow:` block. Needs aegis-robust[mlflow].",
        ),
    ] = None,
    mlflow_uri: MlflowUri = None,
    mlflow_experiment: MlflowExperiment = None,
    example: Annotated[
        bool, typer.Option("--example", help="Write a commented example config to CONFIG and exit.")
    ] = False,
) -> None:
    """Run a whole security audit from one YAML config and gate on its thresholds.

    The config names the model(s), the data, and a list of evaluations, each with a `type`
    (attack, defend, detect, certify, poison, extract, membership), its options and an
    optional `require` block of thresholds (min_clean_accuracy, min_adversarial_accuracy,
    max_success_rate, min_detection_auc, min_robust_accuracy, max_clean_flagged,
    min_certified_accuracy + radius, max_abstain_rate, max_backdoor_success,
    max_cleaned_backdoor_success, max_extraction_fidelity, max_transfer_success,
    max_membership_auc). Every evaluation runs for every model into
    OUT/<index>-<type>-<model>/ (its own results.json and report.html); OUT/results.json
    holds each figure, each threshold (value, required, passed) and the overall verdict. A
    threshold whose figure is missing fails. An evaluation that fails to run is recorded
    and the audit goes on.

    --resume continues an interrupted audit (killed, or stopped by an error that is not an
    evaluation's): what finished is read back from OUT (OUT/resume.json keeps a key of every
    complete evaluation), an attack evaluation cut short resumes from its batches, and the
    rest runs; evaluations that failed to run are run again.

    With --mlflow, or an `mlflow: {uri: ..., experiment: ...}` block in the config, the
    finished audit is logged to MLflow (default store: MLFLOW_TRACKING_URI, else
    sqlite:///mlflow.db here).

    Exit codes: 0 every evaluation ran and every threshold passed; 3 a threshold failed
    (the CI gate); 1 an evaluation failed to run, or the config is invalid (one line
    naming the key); 2 usage error.

    Example:

        aegis audit --example audit.yaml   # then edit its `models:` path

        aegis audit audit.yaml --out runs/audit

        aegis audit audit.yaml --out runs/audit --resume   # after an interruption
    """
    from aegis.audit.config import load_config
    from aegis.io import rundir
    from aegis.workflows.audit import run_audit

    if example:
        if config == "-":
            typer.echo(EXAMPLE, nl=False)
        else:
            Path(config).write_text(EXAMPLE)
            typer.echo(f"wrote {config}; edit its `models:` path, then: aegis audit {config}")
        return
    cfg = load_config(config)
    if resume and out is None and cfg.out is None:
        raise ConfigError(
            "--resume needs the run directory of the interrupted audit: pass --out OUT or set "
            "`out:` in the config"
        )
    if mlflow is False and (mlflow_uri is not None or mlflow_experiment is not None):
        raise ConfigError("--no-mlflow contradicts --mlflow-uri/--mlflow-experiment; drop one")
    out_dir = out or (Path(cfg.out) if cfg.out else rundir.default_run_dir(Path("runs"), "audit"))
    if resume and overwrite:
        raise UsageError("--resume continues the audit in --out, --overwrite replaces it; drop one")
    results = run_audit(cfg, out_dir, resume=resume, overwrite=overwrite)
    _print_table(results.results)
    if results["reused"]:
        typer.echo(
            f"resumed: {len(results['reused'])} finished evaluation(s) read back "
            f"({', '.join(results['reused'])})"
        )
    block = cfg.mlflow
    if mlflow is not False and (wanted(mlflow, mlflow_uri, mlflow_experiment) or block):
        track(
            results["out_dir"],
            mlflow_uri or (block.uri if block else None),
            mlflow_experiment or (block.experiment if block else None),
        )
    if results["errors"]:
        typer.echo(f"error: {results['errors']} evaluation(s) failed to run", err=True)
        raise typer.Exit(EXIT_ERROR)
    if not results["passed"]:
        raise typer.Exit(EXIT_GATE)
