"""``aegis extract MODEL DATA``: steal a model through its outputs (the work is in
:func:`aegis.leakage.extraction.run_extraction`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aegis.cli.formatting import share, wide_console
from aegis.cli.options import (
    Factory,
    Labels,
    Mlflow,
    MlflowExperiment,
    MlflowUri,
    NumClasses,
    Out,
    Overwrite,
    Seed,
    TrustSidecar,
    items,
)
from aegis.cli.run_dir import RunDir
from aegis.errors import ConfigError


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from exc


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
    labels: Labels = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N test inputs.")] = None,
    seed: Seed = 0,
    out: Out = None,
    num_classes: NumClasses = None,
    factory: Factory = None,
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
    from aegis.leakage.extraction import SubstituteRecipe
    from aegis.workflows.extract import run_extraction

    options = {"num_classes": num_classes, "factory": factory, "trust_sidecar": trust_sidecar}
    recipe = SubstituteRecipe(arch=arch, epochs=epochs, min_steps=min_steps, lr=lr)
    run_dir = RunDir.of(
        out,
        "extract",
        overwrite=overwrite,
        mlflow=mlflow,
        mlflow_uri=mlflow_uri,
        mlflow_experiment=mlflow_experiment,
    )
    with run_dir.writing("extract") as bar:
        results = run_extraction(
            model,
            data,
            query_data=query_data,
            budgets=_ints(budgets, "--budgets"),
            outputs=items(outputs),
            recipe=recipe,
            attack=attack_name,
            norm=norm,
            eps=eps,
            steps=steps,
            transfer_limit=transfer_limit,
            labels=labels,
            limit=limit,
            seed=seed,
            out=run_dir.out_dir,
            progress=bar.update,
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
        f"{share(e['victim_accuracy'])} on {e['n_test']}); queries from {q['source']}{resized}"
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
            share(r["substitute_accuracy"]),
            share(r["fidelity"]),
            "–" if t is None else share(t["success_rate"]),
        )
    wide_console().print(grid)
    typer.echo(
        f"accuracy: substitute on the test data; fidelity: agreement with the victim; "
        f"transfer: {attack_name} {norm} ε={eps:g} crafted on the substitute, share of the "
        f"victim's correct inputs it then misclassifies. results: "
        f"{Path(results['out_dir']) / 'results.json'}"
    )
    run_dir.track(results["out_dir"])
