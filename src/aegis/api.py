"""The one Python call behind ``aegis attack``: load, attack, measure, write the run directory."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aegis.engine import Evaluation, ProgressFn, evaluate
from aegis.errors import ConfigError, DataError
from aegis.io import rundir
from aegis.io.data import Dataset, load_dataset
from aegis.metrics import summarize
from aegis.model import Classifier
from aegis.registry import create_all
from aegis.threat import ThreatModel

log = logging.getLogger(__name__)


@dataclass
class AttackRun:
    """The outcome of ``run_attack``: the evaluation, its metrics, and where it was written."""

    evaluation: Evaluation
    metrics: dict[str, Any]
    results: dict[str, Any]
    out_dir: Path | None

    @property
    def verdict(self) -> str:
        return str(self.metrics["verdict"]["text"])

    @property
    def reached_threshold(self) -> bool | None:
        reached = self.metrics["verdict"]["reached"]
        return None if reached is None else bool(reached)


def _as_dataset(
    data: Dataset | str | Path | tuple[np.ndarray, np.ndarray],
    labels: str | Path | None,
    data_options: dict[str, Any],
) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, tuple):
        x, y = data
        return Dataset(
            x=np.asarray(x, np.float32),
            y=np.asarray(y, np.int64),
            name="arrays",
            num_classes=None,
            provenance={"source": "in-memory arrays"},
        )
    return load_dataset(str(data), labels=None if labels is None else str(labels), **data_options)


def _as_classifier(
    model: Classifier | str | Path, dataset: Dataset, model_options: dict[str, Any]
) -> Classifier:
    if isinstance(model, Classifier):
        return model
    from aegis.io.models import load_classifier

    options = dict(model_options)
    options.setdefault("input_shape_hint", tuple(dataset.x.shape[1:]))
    return load_classifier(str(model), **options)


def check_compatible(model: Classifier, dataset: Dataset) -> np.ndarray:
    """Data and model must agree on the input shape, and the data needs labels; returns them.

    Label ranges and the input box are checked by ``engine.evaluate`` for every caller."""
    shape = tuple(dataset.x.shape[1:])
    if shape != model.input_shape:
        what = "channels" if shape[1:] == model.input_shape[1:] else "shape (C, H, W)"
        raise DataError(
            f"the data has {what} {shape if what != 'channels' else shape[0]} but the model "
            f"expects {model.input_shape if what != 'channels' else model.input_shape[0]}; "
            "convert the data or pass --input-shape/--layout"
        )
    y = dataset.y
    if y is None:
        raise DataError("the data has no labels; pass --labels FILE.npy")
    return y


def run_attack(
    model: Classifier | str | Path,
    data: Dataset | str | Path | tuple[np.ndarray, np.ndarray],
    *,
    labels: str | Path | None = None,
    attack: str | list[str] = "pgd",
    norm: str = "linf",
    eps: float = 0.3,
    targets: int | np.ndarray | None = None,
    success_threshold: float | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    attack_misclassified: bool = False,
    limit: int | None = None,
    progress: ProgressFn | None = None,
    model_options: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
    on_loaded: Callable[[Classifier, Dataset], None] | None = None,
    **attack_params: Any,
) -> AttackRun:
    """Attack a model on a dataset and measure it; write a run directory if ``out`` is given.

    ``model`` is a Classifier or a model file; ``data`` a Dataset, a file / folder / built-in
    name, or ``(x, y)`` arrays (NCHW floats). ``attack_params`` are the attack's
    hyper-parameters (``steps``, ``step_size``, ``restarts``, ...). ``attack`` may name an
    ensemble (``"apgd-ce,apgd-t"`` or a list): each member runs only on the points the earlier
    ones failed on, and each point keeps its first success.
    """
    if success_threshold is not None and not 0 <= success_threshold <= 1:
        raise ConfigError(
            f"success threshold must be a share in [0, 1], got {success_threshold} "
            "(write 0.9 for 90%)"
        )
    algo = create_all(attack, **attack_params)
    threat = ThreatModel(norm, eps, targeted=targets is not None)
    dataset = _as_dataset(data, labels, dict(data_options or {}))
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"limit must be >= 1, got {limit}")
        dataset = dataset.subset(limit)
    clf = _as_classifier(model, dataset, dict(model_options or {}))
    y = check_compatible(clf, dataset)
    if on_loaded is not None:
        on_loaded(clf, dataset)
    ev = evaluate(
        clf,
        dataset.x,
        y,
        algo,
        threat,
        targets=targets,
        batch_size=batch_size,
        seed=seed,
        attack_misclassified=attack_misclassified,
        progress=progress,
    )
    metrics = summarize(ev.records, clf.num_classes, success_threshold)
    results: dict[str, Any] = {
        "schema": rundir.SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv if sys.argv and sys.argv[0].endswith("aegis") else None,
        "versions": rundir.versions(),
        "seed": seed,
        "model": clf.describe(),
        "data": dataset.to_dict(),
        "config": {**ev.config, "success_threshold": success_threshold},
        "metrics": metrics,
        "seconds": ev.seconds,
        "records": ev.records.to_dict(),
        "files": {},
    }
    out_dir = None
    if out is not None:
        out_dir = rundir.prepare(Path(out))
        rec = ev.records
        rundir.write_npz(
            out_dir / "samples.npz",
            x=dataset.x,
            x_adv=ev.x_adv,
            y=rec.y,
            clean_pred=rec.clean_pred,
            adv_pred=rec.adv_pred,
            target=rec.target,
        )
        from aegis.report.plots import save_grid

        shown = np.flatnonzero(rec.success)
        if shown.size < 8:
            shown = np.concatenate([shown, np.flatnonzero(~rec.success)])[:8]
        shown = shown[:8]
        save_grid(
            out_dir / "grid.png",
            dataset.x[shown],
            ev.x_adv[shown],
            rec.y[shown],
            rec.clean_pred[shown],
            rec.adv_pred[shown],
            title=f"{attack} {norm} eps={eps}"
            + (f" target={targets}" if isinstance(targets, int) else ""),
        )
        results["files"] = {"samples": "samples.npz", "grid": "grid.png"}
        rundir.write_json(out_dir / "results.json", results)
    return AttackRun(ev, metrics, results, out_dir)
