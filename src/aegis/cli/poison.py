"""``aegis poison``: the Typer command over :func:`aegis.workflows.poison.run_poisoning` (no
logic of its own); imports nothing heavy until it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from aegis.cli.formatting import pct
from aegis.cli.options import Mlflow, MlflowExperiment, MlflowUri, Out, Overwrite, Seed
from aegis.cli.run_dir import RunDir


def poison(
    dataset: Annotated[
        str,
        typer.Option(
            help="Built-in dataset (mnist, digits) or an .npz with train/test splits: its train "
            "split is poisoned, its test split scores every model."
        ),
    ] = "digits",
    attack: Annotated[
        str,
        typer.Option(
            help="label-flip (random labels; with --source A: A → --target), badnets (patch "
            "trigger, relabeled to --target), blend (alpha-blended --pattern, relabeled) or "
            "label-consistent (clean-label: trigger + PGD on target-class images, labels kept)."
        ),
    ] = "badnets",
    rate: Annotated[
        float,
        typer.Option(
            help="Share of the training set poisoned, in (0, 1]: exactly round(rate·n) points. "
            "label-consistent draws them from the target class."
        ),
    ] = 0.1,
    target: Annotated[int, typer.Option(help="Target class of the backdoor / of the flip.")] = 0,
    source: Annotated[
        int | None, typer.Option(help="label-flip only: flip points of this class to --target.")
    ] = None,
    trigger: Annotated[
        str,
        typer.Option(
            help="Patch trigger: SHAPE:key=value,... with SHAPE square, checkerboard or pattern; "
            "keys size (pixels), pos (br, bl, tr, tl, center), offset (pixels from the edges), "
            "value (pixel value), file (.npy pattern). E.g. square:size=3,pos=br or "
            "pattern:file=trigger.npy,pos=tl."
        ),
    ] = "square:size=3,pos=br",
    pattern: Annotated[
        str, typer.Option(help="blend only: checkerboard, noise, or a full-size .npy image.")
    ] = "checkerboard",
    alpha: Annotated[float, typer.Option(help="blend only: blend weight in (0, 1].")] = 0.2,
    attack_eps: Annotated[
        float, typer.Option(help="label-consistent only: L∞ budget of the PGD step.")
    ] = 0.3,
    attack_steps: Annotated[
        int, typer.Option(help="label-consistent only: PGD steps on the clean model.")
    ] = 20,
    defense: Annotated[
        str,
        typer.Option(
            help="Poison detectors, comma-separated: activation-clustering, spectral; 'none' "
            "for no detection."
        ),
    ] = "activation-clustering,spectral",
    spectral_eps: Annotated[
        float | None,
        typer.Option(
            help="spectral: upper bound ε on the poisoned share of a class (default: 0.5 in "
            "adaptive mode, a bound that needs no knowledge of the attack; in fixed mode, for a "
            "targeted attack n_poisoned / size of the target class, the attacker's figure and "
            "a best case for the defense, else --rate)."
        ),
    ] = None,
    spectral_mode: Annotated[
        str,
        typer.Option(
            help="spectral: adaptive (flag each class's separated far mode, at most 1.5·ε of "
            "it) or fixed (the paper: the 1.5·ε·n_class highest scores of every class)."
        ),
    ] = "adaptive",
    ac_analysis: Annotated[
        str,
        typer.Option(
            help="activation-clustering: exclusion (retrain once without the suspect clusters), "
            "silhouette or size (smaller cluster under 35% of its class)."
        ),
    ] = "exclusion",
    arch: Annotated[
        str | None,
        typer.Option(help="mnist_cnn, digits_cnn or tiny_mlp (default: the dataset's CNN)."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs of every model.")] = 5,
    lr: Annotated[float, typer.Option(help="Peak learning rate (Adam, one-cycle).")] = 2e-3,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 64,
    train_limit: Annotated[
        int | None, typer.Option(help="Use only the first N training points.")
    ] = None,
    test_limit: Annotated[int | None, typer.Option(help="Use only the first N test points.")] = (
        None
    ),
    seed: Seed = 0,
    out: Out = None,
    overwrite: Overwrite = False,
    mlflow: Mlflow = False,
    mlflow_uri: MlflowUri = None,
    mlflow_experiment: MlflowExperiment = None,
) -> None:
    """Poison a training set, train the victim on it, detect the poison and retrain.

    Four steps, all with the same training recipe and seed: (1) train a model on the clean
    training split; (2) poison the split with --attack and train the victim on it; (3) run each
    --defense detector on the victim's penultimate-layer representations of the poisoned set
    and score its flags against the ground truth (precision, recall); (4) retrain on the points
    each detector kept. Every model is scored on the test split: clean accuracy, per-class
    precision/recall/F1 (in results.json) and, for a backdoor, the attack success rate: the
    share of triggered test inputs, whose true class is not --target, predicted as --target.

    Example (BadNets, 10% of MNIST's 4,000 training images, a 3×3 white square in the
    bottom-right corner, both detectors):

    \b
        aegis poison --dataset mnist --attack badnets --rate 0.1 --target 0
        --trigger square:size=3,pos=br --defense activation-clustering,spectral --epochs 3
        --out runs/poison

    Prints clean / poisoned / cleaned models side by side and writes OUT/results.json
    (kind "poisoning").
    """
    from aegis.errors import ConfigError
    from aegis.workflows.poison import run_poisoning

    names = [d.strip() for d in defense.split(",") if d.strip()]
    if names == ["none"]:
        names = []
    if attack != "label-flip" and source is not None:
        raise ConfigError(f"--source applies to label-flip only, not {attack}")
    run_dir = RunDir.of(
        out,
        "poison",
        overwrite=overwrite,
        mlflow=mlflow,
        mlflow_uri=mlflow_uri,
        mlflow_experiment=mlflow_experiment,
    )
    with run_dir.writing():
        results = run_poisoning(
            dataset,
            attack=attack,
            rate=rate,
            target=target,
            source=source,
            trigger=trigger,
            pattern=pattern,
            alpha=alpha,
            attack_eps=attack_eps,
            attack_steps=attack_steps,
            defenses=names,
            spectral_eps=spectral_eps,
            spectral_mode=spectral_mode,
            ac_analysis=ac_analysis,
            arch=arch,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            train_limit=train_limit,
            test_limit=test_limit,
            seed=seed,
            out=run_dir.out_dir,
        )
    p = results["poisoning"]
    typer.echo(
        f"{results['config']['attack']['name']}: {p['n_poisoned']} of {p['n_train']} training "
        f"points poisoned ({p['rate']:.1%}), {p['labels_changed']} labels changed; "
        f"{results['seconds']:.1f} s"
    )
    _print_table(p)
    typer.echo(f"results: {Path(results['out_dir']) / 'results.json'}")
    run_dir.track(results["out_dir"])


def _print_table(p: dict[str, Any]) -> None:
    """Clean / poisoned / cleaned models side by side."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    table.add_column("model")
    for col in ("clean accuracy", "backdoor success", "flagged", "precision", "recall"):
        table.add_column(col, justify="right")

    def row(label: str, m: dict[str, Any], det: dict[str, Any] | None) -> None:
        bd = m["backdoor"]
        table.add_row(
            label,
            pct(m["clean_accuracy"]),
            pct(None if bd is None else bd["rate"]),
            "" if det is None else str(det["flagged"]),
            "" if det is None else pct(det["precision"]),
            "" if det is None else pct(det["recall"]),
        )

    row("clean data", p["models"]["clean"], None)
    row("poisoned data", p["models"]["poisoned"], None)
    for name, d in p["defenses"].items():
        row(f"cleaned by {name}", d["cleaned"], d["detection"])
    Console().print(table)
