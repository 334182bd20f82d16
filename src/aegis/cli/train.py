"""``aegis train``: a seeded reference CNN on a built-in dataset (the work is in
:func:`aegis.zoo.train.train_reference`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from aegis.cli.options import Seed, params


def train(
    dataset: Annotated[str, typer.Option(help="Built-in dataset: mnist or digits.")] = "mnist",
    defense: Annotated[
        str | None,
        typer.Option(
            help="Robust training: pgd-at (Madry et al.), trades (Zhang et al.), fast-at "
            "(Wong et al.) or mart (Wang et al.); none: standard training."
        ),
    ] = None,
    adversarial: Annotated[
        str | None,
        typer.Option(help="Older spelling: --adversarial pgd is --defense pgd-at."),
    ] = None,
    eps: Annotated[float, typer.Option(help="L∞ budget for adversarial training.")] = 0.3,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the zoo's).")] = None,
    seed: Seed = 0,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="A defense hyper-parameter as NAME=VALUE, repeatable (trades: beta, mart: "
            "lam, fast-at: step_ratio).",
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for the model file and its sidecar.")] = Path(
        "models"
    ),
    noise_sigma: Annotated[
        float | None,
        typer.Option(
            help="Train on Gaussian-noise-augmented inputs, N(0, σ²) per batch (Cohen et al.): "
            "the base model of randomized smoothing for `aegis certify --sigma σ`, written as "
            "<dataset>_cnn_noise<σ>.safetensors. Not with --defense."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Retrain even if the model exists.")] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--no-resume",
            help="Continue an interrupted run from its last finished epoch (<model>.ckpt.pt).",
        ),
    ] = True,
) -> None:
    """Train a seeded reference CNN on a built-in dataset (model file + model.json sidecar)."""
    from aegis.zoo.train import train_reference

    result = train_reference(
        dataset,
        out_dir=out,
        epochs=epochs,
        defense=defense,
        defense_params=params(param) or None,
        adversarial=adversarial,
        eps=eps,
        seed=seed,
        progress=sys.stderr.isatty(),
        force=force,
        resume=resume,
        noise_sigma=noise_sigma,
    )
    robust, noisy = result.robust_accuracy, result.noisy_test_accuracy
    typer.echo(
        f"model {result.model_path} (sidecar {result.sidecar_path}): "
        + (f"defense {result.defense}, " if result.defense else "")
        + f"test accuracy {result.test_accuracy:.2%}"
        + (f", PGD robust accuracy {robust:.2%} at eps {eps}" if robust is not None else "")
        + (f", under its training noise {noisy:.2%}" if noisy is not None else "")
        + f", {result.seconds:.0f} s"
        + (" (reused)" if result.reused else "")
        + (
            f" (resumed after epoch {result.resumed_from_epoch})"
            if result.resumed_from_epoch
            else ""
        )
    )
