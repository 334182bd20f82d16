"""Run the remedy of each sanity flag that has one, and keep the per-sample worst case.

After an attack run, the probe flags ``probabilities``, ``randomized`` and (for a rounding step
a traced torch module shows) ``zero-gradients`` have standard remedies (:mod:`aegis.remedies`).
Each remedy attacks again, on the remedied view of the model, only
the points every earlier attack failed on; a point fooled there counts as fooled (success is
decided by predicting again, as always). The naive figure stays beside the remedied one, and
the remedied view is probed again: a flag whose probe is clean is *remedied*, one that still
fires stays raised, and the verdict then stays SUSPICIOUS.

    >>> per_budget, x_adv, done = run_remedies(plan, clf, dataset, y, per_budget, flags, x_adv)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from aegis import sanity
from aegis.attacks.base import Attack
from aegis.engine import evaluate
from aegis.metrics import adversarial_accuracy
from aegis.model import Classifier
from aegis.records import Records
from aegis.registry import create
from aegis.remedies import EOT_DRAWS, EOTClassifier, bpda_view, log_probabilities
from aegis.threat import ThreatModel

if TYPE_CHECKING:
    from aegis.io.data import Dataset
    from aegis.workflows.attack import AttackPlan

LABEL_ONLY_QUERIES = 1000
"""HopSkipJump's query budget per point when it joins a suite as the label-only remedy."""

PROBE = 64


@dataclass
class Remedy:
    flags: list[str]
    model: Classifier
    attacks: list[Attack]
    notes: list[str]


def plan_remedy(
    plan: AttackPlan, clf: Classifier, flags: list[sanity.Flag], x: torch.Tensor
) -> Remedy | None:
    """The remedied view and the attacks to run on it, or None when no raised flag has one."""
    raised = set(sanity.raised(flags))
    if plan.minimal or not raised & {"probabilities", "randomized", "zero-gradients"}:
        return None
    model, attacks, notes, fixed = clf, list(plan.attacks), [], []
    bpda = bpda_view(clf) if "zero-gradients" in raised else None
    if bpda is not None:
        model = bpda[0]
        fixed.append("zero-gradients")
        notes.append(f"BPDA: {', '.join(bpda[1])} in the model differentiated as the identity")
    if "probabilities" in raised:
        model = log_probabilities(model, x)
        fixed.append("probabilities")
        notes.append(f"every attack sees {model.provenance['outputs']}, not probabilities")
        if plan.name in ("standard", "fast") or not any(
            not a.needs_gradients for a in plan.attacks
        ):
            attacks.append(create("hsj", queries=LABEL_ONLY_QUERIES))
            notes.append(
                f"HopSkipJump (label-only, {LABEL_ONLY_QUERIES} queries, projected to ε) "
                "added as a final member: it does not care about saturation"
            )
    # a saturated softmax can hide randomness (both draws give 1.0): look again on the view
    revealed = model is not clf and "randomized" not in raised and sanity.varies(model, x[:16])
    if ("randomized" in raised or revealed) and clf.eot_samples == 1 and model.differentiable:
        model = EOTClassifier(model, EOT_DRAWS)
        if "randomized" in raised:
            fixed.append("randomized")
        else:
            notes.append("the log-probabilities vary between two passes: the model is random")
        notes.append(f"EOT: every gradient averages {EOT_DRAWS} random draws (queries: one)")
    if not fixed:
        return None
    return Remedy(fixed, model, attacks, notes)


def run_remedies(
    plan: AttackPlan,
    remedy: Remedy,
    dataset: Dataset,
    y: np.ndarray,
    per_budget: list[tuple[float, Records]],
    x_adv: np.ndarray,
    flags: list[sanity.Flag],
) -> tuple[list[tuple[float, Records]], np.ndarray, dict[str, Any]]:
    """Attack the points still standing with the remedy, per budget; the merged records, the
    headline's adversarial inputs, and what ``results.json`` records under ``remedies``."""
    start = time.perf_counter()
    merged: list[tuple[float, Records]] = []
    gained: list[int] = []
    for number, (eps, rec) in enumerate(per_budget):
        standing = np.flatnonzero(rec.attacked & ~rec.success)
        if not len(standing):
            merged.append((eps, rec))
            gained.append(0)
            continue
        targets = plan.targets
        if isinstance(targets, np.ndarray):
            targets = targets[standing]
        ev = evaluate(
            remedy.model,
            dataset.x[standing],
            y[standing],
            remedy.attacks,
            ThreatModel(plan.norm, eps, targeted=plan.targets is not None),
            targets=targets,
            batch_size=plan.batch_size,
            seed=plan.seed + 1 + number,
            executor=plan.runner,
        )
        new = _merge(rec, ev.records, standing, len(plan.attacks))
        if number == len(per_budget) - 1:
            won = standing[ev.records.success]
            x_adv = x_adv.copy()
            x_adv[won] = ev.x_adv[ev.records.success]
        merged.append((eps, new))
        gained.append(int(ev.records.success.sum()))
    cured, again, checks = _cured(plan, remedy, dataset, y, per_budget, flags)
    record = {
        "flags": remedy.flags,
        "remedied": cured,
        "still_raised": [name for name in remedy.flags if name not in cured],
        "weak_members_rechecked": checks,
        "what": remedy.notes,
        "attacks": [a.registry_name for a in remedy.attacks],
        "naive_adversarial_accuracy": adversarial_accuracy(per_budget[-1][1]),
        "remedied_adversarial_accuracy": adversarial_accuracy(merged[-1][1]),
        "points_gained": gained[-1],
        "sweep_points_gained": gained if len(gained) > 1 else None,
        "probe_after": [
            {"name": f.name, "flagged": f.flagged, "evidence": f.evidence} for f in again
        ],
        "seconds": time.perf_counter() - start,
    }
    return merged, x_adv, record


def _cured(
    plan: AttackPlan,
    remedy: Remedy,
    dataset: Dataset,
    y: np.ndarray,
    per_budget: list[tuple[float, Records]],
    flags: list[sanity.Flag],
) -> tuple[list[str], list[sanity.Flag], dict[str, Any] | None]:
    """The raised flags the remedied view no longer shows: the probe checks run on it again
    (a random model stays random: EOT attacking its expectation is that remedy), and, for
    ``weak-attack-wins``, the white-box members run on the remedied view over the points a
    weaker member won; cured when they fool all but the tolerated share of them."""
    raised = set(sanity.raised(flags))
    k = min(len(dataset.x), PROBE)
    again = sanity.probe_model(
        remedy.model, torch.from_numpy(dataset.x[:k]), torch.from_numpy(y[:k])
    )
    eot = remedy.model.eot_samples > 1
    cured = [
        f.name
        for f in again
        if f.name in raised and (not f.flagged or (f.name == "randomized" and eot))
    ]
    checks = None
    if "weak-attack-wins" in raised and remedy.model.differentiable:
        checks = _recheck_weak(plan, remedy, dataset, y, per_budget[-1])
        if checks["cured"]:
            cured.append("weak-attack-wins")
    return cured, again, checks


def _recheck_weak(
    plan: AttackPlan,
    remedy: Remedy,
    dataset: Dataset,
    y: np.ndarray,
    head: tuple[float, Records],
) -> dict[str, Any]:
    eps, rec = head
    weak = [i for i, a in enumerate(plan.attacks) if _weak(a)]
    rows = np.flatnonzero(np.isin(rec.attack_index, weak))
    strong = [a for a in remedy.attacks if not _weak(a)]
    if not len(rows) or not strong:
        return {"points": len(rows), "fooled": 0, "cured": False}
    targets = plan.targets[rows] if isinstance(plan.targets, np.ndarray) else plan.targets
    ev = evaluate(
        remedy.model,
        dataset.x[rows],
        y[rows],
        strong,
        ThreatModel(plan.norm, eps, targeted=plan.targets is not None),
        targets=targets,
        batch_size=plan.batch_size,
        seed=plan.seed,
        executor=plan.runner,
    )
    fooled = int(ev.records.success.sum())
    tolerated = max(sanity.SHARE * len(rec), 1)
    return {
        "points": len(rows),
        "fooled": fooled,
        "attacks": [a.registry_name for a in strong],
        "cured": len(rows) - fooled <= tolerated,
    }


def _weak(attack: Attack) -> bool:
    return not attack.needs_gradients or attack.registry_name in sanity.SINGLE_STEP


def _merge(rec: Records, extra: Records, rows: np.ndarray, offset: int) -> Records:
    """``rec`` with the rows ``rows`` replaced by ``extra``'s where the remedy fooled them
    (calls are added either way: the remedy spent them)."""
    out = Records(**{f.name: getattr(rec, f.name).copy() for f in fields(Records)})
    won = extra.success
    hit = rows[won]
    for name in ("adv_pred", "success", "l0", "l1", "l2", "linf"):
        getattr(out, name)[hit] = getattr(extra, name)[won]
    out.attack_index[hit] = np.where(
        extra.attack_index[won] >= 0, extra.attack_index[won] + offset, -1
    )
    for name in ("forward_calls", "gradient_calls", "seconds"):
        getattr(out, name)[rows] = getattr(out, name)[rows] + getattr(extra, name)
    return out
