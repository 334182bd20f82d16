"""``aegis membership [DATA]``: how much a model reveals about its training set (the work is
in :func:`aegis.leakage.membership.run_membership`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aegis.cli.formatting import share, wide_console
from aegis.cli.options import (
    Labels,
    Mlflow,
    MlflowExperiment,
    MlflowUri,
    Out,
    Overwrite,
    Seed,
    items,
)
from aegis.cli.run_dir import RunDir


def membership(
    data: Annotated[
        str, typer.Argument(help="Labeled data: a built-in (its train split) or a file.")
    ] = "digits",
    labels: Labels = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N examples.")] = None,
    member_fraction: Annotated[
        float, typer.Option(help="Share of the examples the target trains on, in (0, 1).")
    ] = 0.5,
    shadows: Annotated[int, typer.Option(help="LiRA shadow models per variant (>= 1).")] = 4,
    variants: Annotated[
        str,
        typer.Option(
            help="Training recipes of the target, comma-separated: base, or KEY=VALUE joined "
            "by + with keys epochs, lr, wd (weight decay), shift (augmentation pixels)."
        ),
    ] = "base,wd=5e-4,epochs=5,shift=1",
    arch: Annotated[
        str | None,
        typer.Option(help="Target: mnist_cnn, digits_cnn or tiny_mlp (default by shape)."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Epochs of the base recipe.")] = 30,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the base recipe.")] = 2e-3,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 64,
    seed: Seed = 0,
    out: Out = None,
    overwrite: Overwrite = False,
    mlflow: Mlflow = False,
    mlflow_uri: MlflowUri = None,
    mlflow_experiment: MlflowExperiment = None,
) -> None:
    """Measure how much a model trained on DATA reveals about who was in its training set.

        aegis membership mnist --limit 1000 --epochs 20 --shadows 4
        --variants base,wd=5e-3,epochs=5,shift=2
        --out runs/membership

    A target is trained per variant on a random --member-fraction of DATA (the members); the
    rest are non-members. Attacks score every example: threshold (the loss, Yeom et al. 2018)
    and LiRA (Carlini et al. 2022): --shadows models trained with the same recipe on random
    halves of DATA give per-example Gaussians of the logit-scaled confidence in and out of
    training; online (likelihood ratio) and offline (out models only), global variance.

    Reported per variant and attack: ROC-AUC (0.5: nothing leaks) and TPR at 1% and 0.1% FPR,
    next to the target's train and test accuracy.
    """
    from rich.table import Table

    from aegis.leakage.membership import TargetRecipe
    from aegis.workflows.membership import run_membership

    recipe = TargetRecipe(arch=arch, epochs=epochs, lr=lr, batch_size=batch_size)
    run_dir = RunDir.of(
        out,
        "membership",
        overwrite=overwrite,
        mlflow=mlflow,
        mlflow_uri=mlflow_uri,
        mlflow_experiment=mlflow_experiment,
    )
    with run_dir.writing("train target and shadows") as bar:
        results = run_membership(
            data,
            recipe=recipe,
            variants=items(variants),
            shadows=shadows,
            member_fraction=member_fraction,
            limit=limit,
            labels=labels,
            seed=seed,
            out=run_dir.out_dir,
            progress=bar.update,
        )
    c = results["config"]
    grid = Table(
        title=f"membership inference on {results['data']['name']}: {c['members']} members, "
        f"{c['non_members']} non-members, {c['shadows']} shadow models"
    )
    for head in ("variant", "train", "test", "attack", "AUC", "TPR@1%", "TPR@0.1%"):
        grid.add_column(head, justify="left" if head in ("variant", "attack") else "right")
    for row in results["membership"]["variants"]:
        for i, (name, m) in enumerate(row["attacks"].items()):
            grid.add_row(
                row["variant"] if i == 0 else "",
                share(row["train_accuracy"]) if i == 0 else "",
                share(row["test_accuracy"]) if i == 0 else "",
                name,
                f"{m['roc_auc']:.3f}",
                share(m["tpr_at_0.01_fpr"]),
                share(m["tpr_at_0.001_fpr"]),
            )
    wide_console().print(grid)
    typer.echo(
        "AUC 0.5: the attack cannot tell members from non-members. TPR@x%: members found "
        "when at most x% of non-members are flagged (with fewer than 1/x non-members, at 0 "
        f"false positives). results: {Path(results['out_dir']) / 'results.json'}"
    )
    run_dir.track(results["out_dir"])
