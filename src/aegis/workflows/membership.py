"""The membership workflow, the Python call behind ``aegis membership``: train a target per
recipe variant on a random part of the data, run the membership-inference attacks of
:mod:`aegis.leakage.membership` on all of it, and write the run directory."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aegis.errors import ConfigError, DataError
from aegis.io import rundir
from aegis.io.data import BUILTINS, Dataset
from aegis.io.inputs import as_dataset
from aegis.leakage.membership import (
    ATTACKS,
    FPRS,
    TargetRecipe,
    attack_target,
    membership_metrics,
    split_members,
)
from aegis.workflows.result import WorkflowResult
from aegis.workflows.rundir_writer import write_results

log = logging.getLogger("aegis.leakage.membership")  # the name its log lines always carried


def run_membership(
    data: Any = "digits",
    *,
    recipe: TargetRecipe | None = None,
    variants: Sequence[str] = ("base", "wd=5e-4", "epochs=5", "shift=1"),
    shadows: int = 4,
    member_fraction: float = 0.5,
    limit: int | None = None,
    labels: str | Path | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    data_options: dict[str, Any] | None = None,
) -> WorkflowResult:
    """Train a target per recipe variant on a random ``member_fraction`` of ``data`` (the rest
    are its non-members) and run the threshold and LiRA attacks on all of it.

    Args:
        data: labeled data (a built-in name takes its train split, or a file); its first
            ``limit`` examples are the candidates.
        recipe: the base training recipe of target and shadow models.
        variants: ``base`` or ``KEY=VALUE[+...]`` changes of it (``epochs``, ``lr``, ``wd``,
            ``shift``), one target each: the regularization table.
        shadows: shadow models per variant, each trained on a random half of the candidates
            (>= 1).
        member_fraction: the share of candidates the target trains on, in (0, 1).
        seed: seeds the member split, training and the shadow halves.
        out: run directory for ``results.json``.
        progress: called with (models trained, total).

    Returns:
        The results (kind ``membership``; also written to ``out``/results.json): a
        ``membership`` section with one row per variant (train/test accuracy and each attack's
        AUC and TPR at low FPR). Its ``records`` are the per-example ``members`` mask and each
        variant's attack ``scores`` (by variant name, then attack).
    """
    if shadows < 1:
        raise ConfigError(f"shadows must be >= 1 shadow model, got {shadows}")
    if limit is not None and limit < 4:
        raise ConfigError(f"limit must be >= 4 examples, got {limit}")
    if not variants:
        raise ConfigError("give at least one variant, e.g. --variants base,wd=5e-4")
    base = recipe or TargetRecipe()
    recipes = [base.variant(v) for v in variants]
    dataset, x, y = _candidates(data, labels, limit, data_options)
    n = int(x.shape[0])
    k = dataset.num_classes or int(y.max()) + 1
    shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    members = split_members(n, member_fraction, seed)
    mi = torch.from_numpy(np.flatnonzero(members))
    total = len(recipes) * (1 + shadows)
    done = 0
    rows: list[dict[str, Any]] = []
    per_variant: dict[str, dict[str, np.ndarray]] = {}
    start = time.perf_counter()
    for r in recipes:
        t0 = time.perf_counter()
        target = r.train(x[mi], y[mi], num_classes=k, seed=seed)
        done += 1
        if progress is not None:
            progress(done, total)
        scores = attack_target(target, x, y, r, shadows=shadows, seed=seed, num_classes=k)
        done += shadows
        if progress is not None:
            progress(done, total)
        per_variant[r.name] = scores
        rows.append(_row(r, target.predict(x), y, members, scores, shape, t0))
        log.info("%s: %s", r.name, {a: v["roc_auc"] for a, v in rows[-1]["attacks"].items()})
    results: dict[str, Any] = {
        **rundir.header(seed, "membership"),
        "data": dataset.to_dict(),
        "config": _config(members, member_fraction, shadows),
        "membership": {"variants": rows},
        "seconds": time.perf_counter() - start,
        "files": {},
    }
    written = results if out is None else write_results(out, results)
    return WorkflowResult.of(
        "membership", written, records={"members": members, "scores": per_variant}
    )


def _candidates(
    data: Any, labels: str | Path | None, limit: int | None, data_options: dict[str, Any] | None
) -> tuple[Dataset, Tensor, Tensor]:
    """The labeled candidates: a built-in name's train split, or a file; the first ``limit``."""
    options = dict(data_options or {})
    if isinstance(data, str) and data in BUILTINS:
        options.setdefault("split", "train")
    dataset = as_dataset(data, labels, options)
    if limit is not None:
        dataset = dataset.subset(limit)
    x, y = dataset.tensors()
    if y is None:
        raise DataError("membership inference needs labeled data; pass --labels FILE.npy")
    return dataset, x, y


def _row(
    r: TargetRecipe,
    pred: Tensor,
    y: Tensor,
    members: np.ndarray,
    scores: dict[str, np.ndarray],
    shape: tuple[int, int, int],
    t0: float,
) -> dict[str, Any]:
    """One variant's row: its recipe, train/test accuracy and each attack's metrics."""
    mi = torch.from_numpy(np.flatnonzero(members))
    ni = torch.from_numpy(np.flatnonzero(~members))
    return {
        "variant": r.name,
        "recipe": {**asdict(r), "arch": r.arch_for(shape)},
        "train_accuracy": float((pred[mi] == y[mi]).float().mean()),
        "test_accuracy": float((pred[ni] == y[ni]).float().mean()),
        "attacks": {
            name: membership_metrics(s[members], s[~members]) for name, s in scores.items()
        },
        "seconds": time.perf_counter() - t0,
    }


def _config(members: np.ndarray, member_fraction: float, shadows: int) -> dict[str, Any]:
    return {
        "members": int(members.sum()),
        "non_members": int((~members).sum()),
        "member_fraction": member_fraction,
        "shadows": shadows,
        "shadow_data": "random halves of the candidates (members and non-members)",
        "lira": "online and offline, global variance, no augmentation",
        "attacks": list(ATTACKS),
        "fprs": list(FPRS),
        "papers": {
            "threshold": "https://arxiv.org/abs/1709.01604",
            "lira": "https://arxiv.org/abs/2112.03570",
        },
    }
