"""The files of an attack run directory besides ``results.json`` (``samples.npz``,
``grid.png``, ``curve.png``), and the gallery of examples the report shows from
``results.json`` alone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aegis.io import rundir
from aegis.model import Classifier
from aegis.records import Records
from aegis.workflows.rundir_writer import finish_run

if TYPE_CHECKING:
    from aegis.io.data import Dataset
    from aegis.workflows.attack import AttackPlan


def gallery(clf: Classifier, x: np.ndarray, x_adv: np.ndarray, rec: Records) -> dict[str, Any]:
    """A few examples with the model's confidences, so the report needs only results.json."""
    import torch

    from aegis.report.gallery import build_gallery, shown_indices

    shown = shown_indices(rec)

    def probs(v: np.ndarray) -> np.ndarray:
        z = clf.logits(torch.from_numpy(np.ascontiguousarray(v[shown])).to(clf.device))
        z = z.detach().float().cpu()
        sums = z.sum(1)
        if z.numel() and z.min() >= 0 and z.max() <= 1 and bool(((sums - 1).abs() < 1e-4).all()):
            return z.numpy()  # the model already outputs probabilities
        return torch.softmax(z, 1).numpy()

    return build_gallery(x[shown], x_adv[shown], rec, shown, probs(x), probs(x_adv), clf.bounds)


def write_attack_run(
    out_dir: Path,
    results: dict[str, Any],
    dataset: Dataset,
    rec: Records,
    x_adv: np.ndarray,
    plan: AttackPlan,
    eps: float,
    found: np.ndarray | None,
) -> None:
    """Write the run's files into ``out_dir`` (already claimed), ``results.json`` last."""
    name, norm, targets = plan.name, plan.norm, plan.targets
    units = results["model"].get("units")  # attacked on [0, 1]: stored in the model's units
    lo, width = (0.0, 1.0) if units is None else (units[0], units[1] - units[0])
    rundir.write_npz(
        out_dir / "samples.npz",
        x=(dataset.x * width + lo).astype(np.float32) if units else dataset.x,
        x_adv=(x_adv * width + lo).astype(np.float32) if units else x_adv,
        y=rec.y,
        clean_pred=rec.clean_pred,
        adv_pred=rec.adv_pred,
        target=rec.target,
    )
    from aegis.report.gallery import shown_indices
    from aegis.report.plots import save_curve, save_grid

    shown = shown_indices(rec)
    save_grid(
        out_dir / "grid.png",
        dataset.x[shown],
        x_adv[shown],
        rec.y[shown],
        rec.clean_pred[shown],
        rec.adv_pred[shown],
        title=f"{name} {norm} eps={eps:g}"
        + (f" target={targets}" if isinstance(targets, int) else ""),
    )
    results["files"] = {"samples": "samples.npz", "grid": "grid.png"}
    points = curve_points(results)
    if points:
        save_curve(out_dir / "curve.png", points, norm=norm, title=name, minimal_norms=found)
        results["files"]["curve"] = "curve.png"
    finish_run(out_dir, results)


def curve_points(results: dict[str, Any]) -> list[tuple[float, float]]:
    """Accuracy-vs-ε points: a minimal-norm run's curve, else the sweep's budgets."""
    if "minimal" in results:
        return [
            (p["eps"], p["accuracy"])
            for p in results["minimal"]["curve"]
            if p["accuracy"] is not None
        ]
    if "sweep" in results:
        return [
            (s["eps"], s["metrics"]["adversarial_accuracy"])
            for s in results["sweep"]
            if s["metrics"]["adversarial_accuracy"] is not None
        ]
    return []
