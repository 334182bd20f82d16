"""``aegis extract`` and ``aegis membership``: thin Typer commands over the leakage API
(registered in :mod:`aegis.cli`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from aegis.cli_options import Overwrite, Seed, TrustSidecar
from aegis.errors import ConfigError
from aegis.io.claim import claimed
from aegis.report.track_options import Mlflow, MlflowExperiment, MlflowUri, track, wanted


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from exc


def _items(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _wide_console() -> Any:
    from rich.console import Console

    return Console(width=max(Console().width, 110))


def extract(
    model: Annotated[str, typer.Argument(help="The victim model file (only queried).")],
    data: Annotated[
        str, typer.Argument(help="The victim's labeled test data: .npy/.npz, folder, built-in.")
    ],
    query_data: Annotated[
        str | None,
        typer.Option(
            help="The attacker's query pool (labels unused); other image sizes are resized. "
            "Default: the train split of a built-in DATA."
        ),
    ] = None,
    budgets: Annotated[
        str, typer.Option(help="Query budgets, comma-separated: one substitute each.")
    ] = "250,500,1000,2000",
    outputs: Annotated[
        str,
        typer.Option(
            help="What the victim returns, comma-separated: labels (top-1 only: Copycat), "
            "scores (probabilities: Knockoff), round:N (scores rounded to N decimals)."
        ),
    ] = "labels,scores,round:2,round:1",
    arch: Annotated[
        str | None,
        typer.Option(help="Substitute: mnist_cnn, digits_cnn or tiny_mlp (default by shape)."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Substitute training epochs.")] = 20,
    min_steps: Annotated[
        int, typer.Option(help="At least this many optimizer steps (small budgets).")
    ] = 200,
    lr: Annotated[float, typer.Option(help="Substitute peak learning rate.")] = 2e-3,
    attack_name: Annotated[
        str, typer.Option("--attack", "-a", help="Transfer attack crafted on the substitute.")
    ] = "pgd",
    norm: Annotated[str, typer.Option(help="Transfer threat norm.")] = "linf",
    eps: Annotated[float, typer.Option(help="Transfer perturbation budget.")] = 0.3,
    steps: Annotated[int, typer.Option(help="Transfer attack steps.")] = 40,
    transfer_limit: Annotated[
        int, typer.Option(help="Test inputs attacked per substitute (0: none).")
    ] = 200,
    labels: Annotated[str | None, typer.Option("--labels", "-y", help="Labels .npy.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N test inputs.")] = None,
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(help="Run directory for results.json.")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Model outputs (classes).")] = None,
    factory: Annotated[
        str | None, typer.Option(help="package.module:function building the network.")
    ] = None,
    trust_sidecar: TrustSidecar = False,
    overwrite: Overwrite = False,
    mlflow: Mlflow = False,
    mlflow_uri: MlflowUri = None,
    mlflow_experiment: MlflowExperiment = None,
) -> None:
    """Steal MODEL through its outputs: train a substitute from its answers to at most BUDGET
    queries on the attacker's data, for each output policy, and measure what was stolen.

        aegis extract models/mnist_cnn.safetensors mnist --query-data digits
        --budgets 250,500,1000,2000 --outputs labels,scores,round:1 --out runs/extract

    labels is Copycat (Correia-Silva et al. 2018), scores and round:N are Knockoff Nets
    (Orekondy et al. 2019, random sampling; its adaptive bandit is not implemented). Queries
    are drawn uniformly from --query-data; each victim answer counts against the budget.

    Per substitute: accuracy on DATA, fidelity (agreement with the victim's predictions on
    DATA), queries used, and transfer: the share of the victim's correctly classified inputs
    it misclassifies under an attack crafted on the substitute (PGD L∞ ε=0.3 by default).
    Writes results.json and fidelity.png (fidelity against the budget) to the run directory.
    """
    from aegis.io import rundir
    from aegis.leakage.extraction import SubstituteRecipe, run_extraction
    from aegis.progress import progress_bar

    options = {"num_classes": num_classes, "factory": factory, "trust_sidecar": trust_sidecar}
    recipe = SubstituteRecipe(arch=arch, epochs=epochs, min_steps=min_steps, lr=lr)
    out_dir = out if out is not None else rundir.default_run_dir(Path("runs"), "extract")
    with (
        claimed(Path(out_dir), overwrite=overwrite),
        progress_bar(enabled=sys.stderr.isatty()) as bar,
    ):
        task = bar.add_task("extract", total=None)
        results = run_extraction(
            model,
            data,
            query_data=query_data,
            budgets=_ints(budgets, "--budgets"),
            outputs=_items(outputs),
            recipe=recipe,
            attack=attack_name,
            norm=norm,
            eps=eps,
            steps=steps,
            transfer_limit=transfer_limit,
            labels=labels,
            limit=limit,
            seed=seed,
            out=out_dir,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            model_options={k: v for k, v in options.items() if v is not None},
        )
    from rich.table import Table

    e = results["extraction"]
    q = results["query_data"]
    resized = (
        f", resized from {q['resized_from'][0]}×{q['resized_from'][1]}" if q["resized_from"] else ""
    )
    grid = Table(
        title=f"extraction of {results['model']['name']} (victim accuracy "
        f"{_pct(e['victim_accuracy'])} on {e['n_test']}); queries from {q['source']}{resized}"
    )
    for head in ("method", "output", "budget", "queries", "accuracy", "fidelity", "transfer"):
        grid.add_column(head, justify="left" if head in ("method", "output") else "right")
    for r in e["runs"]:
        t = r["transfer"]
        grid.add_row(
            r["method"],
            r["output"],
            str(r["budget"]),
            str(r["queries"]),
            _pct(r["substitute_accuracy"]),
            _pct(r["fidelity"]),
            "–" if t is None else _pct(t["success_rate"]),
        )
    _wide_console().print(grid)
    typer.echo(
        f"accuracy: substitute on the test data; fidelity: agreement with the victim; "
        f"transfer: {attack_name} {norm} ε={eps:g} crafted on the substitute, share of the "
        f"victim's correct inputs it then misclassifies. results: "
        f"{Path(results['out_dir']) / 'results.json'}"
    )
    if wanted(mlflow, mlflow_uri, mlflow_experiment):
        track(results["out_dir"], mlflow_uri, mlflow_experiment)


def membership(
    data: Annotated[
        str, typer.Argument(help="Labeled data: a built-in (its train split) or a file.")
    ] = "digits",
    labels: Annotated[str | None, typer.Option("--labels", "-y", help="Labels .npy.")] = None,
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
    out: Annotated[Path | None, typer.Option(help="Run directory for results.json.")] = None,
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

    from aegis.io import rundir
    from aegis.leakage.membership import TargetRecipe, run_membership
    from aegis.progress import progress_bar

    recipe = TargetRecipe(arch=arch, epochs=epochs, lr=lr, batch_size=batch_size)
    out_dir = out if out is not None else rundir.default_run_dir(Path("runs"), "membership")
    with (
        claimed(Path(out_dir), overwrite=overwrite),
        progress_bar(enabled=sys.stderr.isatty()) as bar,
    ):
        task = bar.add_task("train target and shadows", total=None)
        results = run_membership(
            data,
            recipe=recipe,
            variants=_items(variants),
            shadows=shadows,
            member_fraction=member_fraction,
            limit=limit,
            labels=labels,
            seed=seed,
            out=out_dir,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
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
                _pct(row["train_accuracy"]) if i == 0 else "",
                _pct(row["test_accuracy"]) if i == 0 else "",
                name,
                f"{m['roc_auc']:.3f}",
                _pct(m["tpr_at_0.01_fpr"]),
                _pct(m["tpr_at_0.001_fpr"]),
            )
    _wide_console().print(grid)
    typer.echo(
        "AUC 0.5: the attack cannot tell members from non-members. TPR@x%: members found "
        "when at most x% of non-members are flagged (with fewer than 1/x non-members, at 0 "
        f"false positives). results: {Path(results['out_dir']) / 'results.json'}"
    )
    if wanted(mlflow, mlflow_uri, mlflow_experiment):
        track(results["out_dir"], mlflow_uri, mlflow_experiment)
