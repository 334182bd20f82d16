"""The extract workflow, the Python call behind ``aegis extract``: extract a victim at every
(output policy, query budget), score each substitute (accuracy, fidelity, transfer attack) and
write the run directory (the algorithms are in :mod:`aegis.leakage.extraction`).

    >>> run_extraction("models/mnist_cnn.safetensors", "mnist", query_data="digits")
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aegis.errors import ConfigError
from aegis.io import rundir
from aegis.io.data import BUILTINS, Dataset
from aegis.io.inputs import as_dataset, load_inputs
from aegis.leakage.extraction import (
    OutputPolicy,
    SubstituteRecipe,
    extract,
    fidelity,
    fit_pool,
    transfer_attack,
)
from aegis.model import Classifier
from aegis.workflows.result import WorkflowResult
from aegis.workflows.rundir_writer import write_results

log = logging.getLogger("aegis.leakage.extraction")  # the name its log lines always carried


def run_extraction(
    model: Classifier | str | Path,
    data: Any,
    *,
    query_data: Any = None,
    budgets: Sequence[int] = (250, 500, 1000, 2000),
    outputs: Sequence[str | OutputPolicy] = ("labels", "scores", "round:2", "round:1"),
    recipe: SubstituteRecipe | None = None,
    attack: str = "pgd",
    norm: str = "linf",
    eps: float = 0.3,
    steps: int | None = 40,
    transfer_limit: int = 200,
    labels: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    plot: bool = True,
    progress: Callable[[int, int], None] | None = None,
    model_options: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
) -> WorkflowResult:
    """Extract ``model`` at every (output policy, budget) and score each substitute.

    Args:
        model: the victim (a file or a Classifier); it is only queried.
        data: the victim's test data (labeled): accuracy, fidelity and transfer are measured
            on its first ``limit`` inputs.
        query_data: the attacker's pool (labels unused); default: the train split of a
            built-in ``data`` (the victim's task; the reference models were trained on it).
            Inputs of another height and width are resized bilinearly.
        budgets: query budgets, one substitute each per output policy.
        outputs: victim output policies, ``labels``, ``scores``, ``round:N``.
        recipe: the substitute's training recipe.
        attack, norm, eps, steps: the transfer attack crafted on each substitute.
        transfer_limit: test inputs attacked (0: no transfer attack).
        seed: seeds query order, training and attacks.
        out: run directory for ``results.json`` and ``fidelity.png``.
        plot: write ``fidelity.png`` (fidelity against the budget).
        progress: called with (substitutes finished, total).

    Returns:
        The results (kind ``extract``; also written to ``out``/results.json): an
        ``extraction`` section with one row per substitute in ``runs`` and the fidelity
        ``curves`` per output policy.
    """
    budget_list, policies = _grid(budgets, outputs, transfer_limit)
    recipe = recipe or SubstituteRecipe()
    victim, dataset, y_np = load_inputs(model, data, labels, limit, data_options, model_options)
    pool, resized, pool_source = _pool(data, query_data, victim.input_shape, budget_list[-1])
    test = _Test.of(victim, dataset.x, y_np)
    k = min(transfer_limit, int(test.x.shape[0]))
    transfer = {"attack": attack, "norm": norm, "eps": eps, "steps": steps, "n": k}
    start = time.perf_counter()
    rows = _measure(victim, pool, test, policies, budget_list, recipe, transfer, seed, progress)
    curves = _curves(rows, policies)
    results: dict[str, Any] = {
        **rundir.header(seed, "extraction"),
        "model": victim.describe(),
        "data": dataset.to_dict(),
        "query_data": {
            "source": pool_source,
            "n": int(pool.shape[0]),
            "resized_from": resized,
            "sampling": "uniform random (seeded); smaller budgets query a prefix",
        },
        "config": _config(budget_list, policies, recipe, victim, transfer),
        "extraction": {
            "n_test": int(test.x.shape[0]),
            "victim_accuracy": float((test.victim_pred == test.y).float().mean()),
            "runs": rows,
            "curves": curves,
        },
        "seconds": time.perf_counter() - start,
        "files": {},
    }
    written = results if out is None else _write(out, results, curves, victim, plot)
    return WorkflowResult.of("extract", written)


@dataclass(frozen=True)
class _Test:
    """The victim's labeled test inputs and its predictions on them (an evaluation, not part
    of any attacker's budget)."""

    x: Tensor
    y: Tensor
    victim_pred: Tensor

    @classmethod
    def of(cls, victim: Classifier, x: np.ndarray, y: np.ndarray) -> _Test:
        x_test = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        y_test = torch.from_numpy(np.asarray(y, np.int64))
        return cls(x_test, y_test, victim.predict(x_test))


def _measure(
    victim: Classifier,
    pool: Tensor,
    test: _Test,
    policies: list[OutputPolicy],
    budget_list: list[int],
    recipe: SubstituteRecipe,
    transfer: dict[str, Any],
    seed: int,
    progress: Callable[[int, int], None] | None,
) -> list[dict[str, Any]]:
    """Extract a substitute at every (output policy, budget) and score each: one row each."""
    total = len(policies) * len(budget_list)
    rows: list[dict[str, Any]] = []
    for policy in policies:
        for budget in budget_list:
            sub, info = extract(
                victim, pool, budget=budget, output=policy, recipe=recipe, seed=seed
            )
            row = {
                **info,
                "substitute_accuracy": float((sub.predict(test.x) == test.y).float().mean()),
                "fidelity": fidelity(sub, test.victim_pred, test.x),
                "transfer": _transfer(sub, victim, test.x, test.y, transfer, seed),
            }
            rows.append(row)
            log.info(
                "%s %s budget %d: fidelity %.4f",
                policy.method,
                policy.name,
                budget,
                row["fidelity"],
            )
            if progress is not None:
                progress(len(rows), total)
    return rows


def _grid(
    budgets: Sequence[int], outputs: Sequence[str | OutputPolicy], transfer_limit: int
) -> tuple[list[int], list[OutputPolicy]]:
    """The sorted query budgets and the output policies, checked."""
    budget_list = sorted({int(b) for b in budgets})
    if not budget_list or budget_list[0] < 1:
        raise ConfigError(f"budgets must be >= 1 query each, got {list(budgets)}")
    policies = [o if isinstance(o, OutputPolicy) else OutputPolicy.parse(o) for o in outputs]
    if not policies:
        raise ConfigError("give at least one output policy, e.g. --outputs labels,scores")
    if transfer_limit < 0:
        raise ConfigError(f"transfer_limit must be >= 0, got {transfer_limit}")
    return budget_list, policies


def _pool(
    data: Any, query_data: Any, shape: tuple[int, int, int], largest_budget: int
) -> tuple[Tensor, list[int] | None, str]:
    """The attacker's query pool in the victim's input shape, the (H, W) it was resized from
    (``None``: not resized) and where it comes from; it must hold the largest budget."""
    if query_data is None:
        if not (isinstance(data, str) and data in BUILTINS):
            raise ConfigError(
                "give the attacker's query data (--query-data FILE or a built-in name); only "
                "a built-in test set has a default (its train split)"
            )
        pool_set = as_dataset(data, None, {"split": "train"})
        pool_source = f"{data} train split"
    else:
        pool_set = as_dataset(query_data, None, {"split": "train"})
        pool_source = str(query_data) if not isinstance(query_data, Dataset) else pool_set.name
    pool, resized = fit_pool(pool_set.tensors()[0], shape)
    if largest_budget > pool.shape[0]:
        raise ConfigError(
            f"the largest budget {largest_budget} exceeds the query pool of {pool.shape[0]} "
            "inputs; lower --budgets or give more --query-data"
        )
    return pool, resized, pool_source


def _curves(rows: list[dict[str, Any]], policies: list[OutputPolicy]) -> dict[str, list[list[Any]]]:
    """Fidelity against the budget, one curve of ``[budget, fidelity]`` points per policy."""
    return {
        p.name: [[r["budget"], r["fidelity"]] for r in rows if r["output"] == p.name]
        for p in policies
    }


def _transfer(
    sub: Classifier,
    victim: Classifier,
    x_test: Tensor,
    y_test: Tensor,
    transfer: dict[str, Any],
    seed: int,
) -> dict[str, Any] | None:
    """The transfer attack from the substitute to the victim on the first ``n`` test inputs
    (``None`` when ``n`` is 0)."""
    k = int(transfer["n"])
    if k == 0:
        return None
    return transfer_attack(
        sub,
        victim,
        x_test[:k],
        y_test[:k],
        attack=transfer["attack"],
        norm=transfer["norm"],
        eps=transfer["eps"],
        steps=transfer["steps"],
        seed=seed,
    )


def _config(
    budget_list: list[int],
    policies: list[OutputPolicy],
    recipe: SubstituteRecipe,
    victim: Classifier,
    transfer: dict[str, Any],
) -> dict[str, Any]:
    return {
        "budgets": budget_list,
        "outputs": [p.name for p in policies],
        "substitute": {
            "arch": recipe.arch_for(victim.input_shape),
            "epochs": recipe.epochs,
            "min_steps": recipe.min_steps,
            "lr": recipe.lr,
            "batch_size": recipe.batch_size,
            "augment_shift": recipe.augment_shift,
            "weight_decay": recipe.weight_decay,
        },
        "transfer": transfer,
        "papers": {
            "copycat": "https://arxiv.org/abs/1806.05476",
            "knockoff": "https://arxiv.org/abs/1812.02766",
        },
        "adaptive_sampling": False,
    }


def _write(
    out: str | Path,
    results: dict[str, Any],
    curves: dict[str, list[list[Any]]],
    victim: Classifier,
    plot: bool,
) -> dict[str, Any]:
    """Write the run directory: ``fidelity.png`` (with ``plot``), then the results."""
    out_dir = rundir.prepare(Path(out))
    if plot:
        from aegis.report.plots import save_budget_curve

        save_budget_curve(
            out_dir / "fidelity.png",
            {name: [(float(b), float(f)) for b, f in pts] for name, pts in curves.items()},
            ylabel="fidelity to the victim (%)",
            title=f"extraction of {victim.name}: fidelity vs query budget",
        )
        results["files"]["fidelity_curve"] = "fidelity.png"
    return write_results(out_dir, results)
