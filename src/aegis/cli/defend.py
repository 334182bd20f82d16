"""``aegis defend BASE DATA``: an undefended model and its defended versions in one table
(the work is in :func:`aegis.workflows.defend.compare_defenses`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from aegis.cli.formatting import pct, run_files
from aegis.cli.options import (
    BatchSize,
    Data,
    Labels,
    Limit,
    Mlflow,
    MlflowExperiment,
    MlflowUri,
    Out,
    Overwrite,
    Seed,
    floats,
)
from aegis.cli.run_dir import RunDir


def defend(
    base: Annotated[str, typer.Argument(help="The undefended model file.")],
    data: Data,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", help="A defended model file (e.g. from `aegis train --defense`)."
        ),
    ] = None,
    preprocess: Annotated[
        list[str] | None,
        typer.Option(help="A preprocessing defense put in front of BASE (`aegis defenses`)."),
    ] = None,
    labels: Labels = None,
    attack: Annotated[
        str, typer.Option("--attack", "-a", help="Attack or suite for every row.")
    ] = "standard",
    norm: Annotated[str, typer.Option(help="Threat norm: linf, l2, l1, l0.")] = "linf",
    eps: Annotated[float, typer.Option(help="Perturbation budget.")] = 0.3,
    limit: Limit = None,
    seed: Seed = 0,
    batch_size: BatchSize = None,
    out: Out = None,
    detector: Annotated[
        list[str] | None,
        typer.Option(
            "--detector",
            help="A detector of adversarial inputs put beside BASE: mahalanobis or squeeze "
            "(fitted on clean data, attacked by the attack and a detector-aware PGD).",
        ),
    ] = None,
    smoothed: Annotated[
        list[str] | None,
        typer.Option(
            "--smoothed",
            help="A model file to certify behind randomized smoothing (e.g. from "
            "`aegis certify --train`).",
        ),
    ] = None,
    sigma: Annotated[float, typer.Option(help="Smoothing noise σ for --smoothed.")] = 0.25,
    certify_samples: Annotated[
        int, typer.Option(help="Noise samples per input for --smoothed (Cohen et al.'s n).")
    ] = 1000,
    certify_radii: Annotated[
        str, typer.Option(help="L2 radii of the certified-accuracy column, comma-separated.")
    ] = "0.5,1",
    overwrite: Overwrite = False,
    mlflow: Mlflow = False,
    mlflow_uri: MlflowUri = None,
    mlflow_experiment: MlflowExperiment = None,
) -> None:
    """Compare BASE with its defended versions in one table: clean accuracy, clean macro
    precision/recall/F1, accuracy under the same attack on the same points (preprocessing
    attacked adaptively, with the naive, misleading figure beside it), detection ROC-AUC,
    certified accuracy and training time.

        aegis defend models/mnist_cnn.safetensors mnist -m models/mnist_cnn_pgd.safetensors
        --preprocess jpeg:quality=75 --detector mahalanobis --attack standard --eps 0.3
        --limit 200

        aegis defend models/mnist_cnn.safetensors mnist --smoothed models/noise.safetensors
        --sigma 0.25 --certify-radii 0.5,1 --limit 100

    Accuracy under attack is an upper bound on robust accuracy; a row with a warning sign of
    gradient masking is marked SUSPICIOUS. A detector row's accuracy is that of classifier +
    detector (a flagged input counts as handled), the worst case of the attack and of the
    detector-aware adaptive attack. A smoothed row's certified accuracy is a guarantee at an
    L2 radius (with probability 1 − α), not an attack's figure. Each family in depth:
    `aegis detect`, `aegis certify`.
    """
    from aegis.workflows.defend import compare_defenses

    run_dir = RunDir.of(
        out,
        "defend",
        overwrite=overwrite,
        mlflow=mlflow,
        mlflow_uri=mlflow_uri,
        mlflow_experiment=mlflow_experiment,
    )
    with run_dir.writing():
        table = compare_defenses(
            base,
            data,
            models=model or (),
            preprocess=preprocess or (),
            attack=attack,
            norm=norm,
            eps=eps,
            labels=labels,
            limit=limit,
            seed=seed,
            batch_size=batch_size,
            out=run_dir.out_dir,
            detectors=detector or (),
            smoothed=smoothed or (),
            sigma=sigma,
            certify_samples=certify_samples,
            certify_radii=floats(certify_radii, "--certify-radii") or (),
        )
    _print_table(table.results, attack, norm, eps)
    typer.echo(
        "P/R/F1: clean macro precision, recall, F1. attacked: accuracy under the attack, an "
        "upper bound on robust accuracy, not a guarantee (detector rows: classifier + "
        "detector, worst case with the adaptive attack). *naive: the same attack without "
        "BPDA/EOT, MISLEADING. certified: certified L2 accuracy at each radius. "
        + run_files(table["out_dir"])
    )
    run_dir.track(table["out_dir"])


def _print_table(table: dict[str, Any], attack: str, norm: str, eps: float) -> None:
    from rich.console import Console
    from rich.table import Table

    grid = Table(title=f"{attack} {norm} ε={eps:g} on {table['rows'][0]['n']} inputs")
    heads = ("model", "clean", "P", "R", "F1", "attacked", "naive*", "det AUC", "certified")
    for head in (*heads, "train s", "flags"):
        grid.add_column(
            head,
            justify="left" if head in ("model", "flags") else "right",
            min_width=28 if head == "model" else None,
        )
    for r in table["rows"]:
        naive = r["naive_adversarial_accuracy"]
        cert = r["certified_accuracy"]
        grid.add_row(
            r["name"].replace(".safetensors", ""),
            pct(r["clean_accuracy"]),
            *(pct(r[f"clean_macro_{k}"]) for k in ("precision", "recall", "f1")),
            "–" if r["adversarial_accuracy"] is None else pct(r["adversarial_accuracy"]),
            "–" if naive is None else pct(naive),
            "–" if r["detection_auc"] is None else f"{r['detection_auc']:.3f}",
            "–" if cert is None else " ".join(f"{pct(v)}@{k}" for k, v in cert.items()),
            "–" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}",
            "SUSPICIOUS: " + ", ".join(r["suspicious"]) if r["suspicious"] else "",
        )
    Console(width=max(Console().width, 150)).print(grid)
