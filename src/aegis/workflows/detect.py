"""The detect workflow, the Python call behind ``aegis detect``: fit a detector of
adversarial inputs on clean data, evaluate it against an attack and the detector-aware
adaptive attack (:mod:`aegis.defenses.detection`), and write the run directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aegis.defenses.detection import DETECTORS, Detector, DetectorAwarePGD, evaluate_detector
from aegis.errors import ConfigError, DataError
from aegis.io import rundir
from aegis.io.data import Dataset
from aegis.io.inputs import (
    as_classifier,
    as_dataset,
    check_compatible,
    declared_bounds,
    to_unit_box,
)
from aegis.model import Classifier
from aegis.registry import create_all
from aegis.threat import ThreatModel
from aegis.workflows.result import WorkflowResult
from aegis.workflows.rundir_writer import write_results


def run_detect(
    model: Classifier | str | Path,
    data: Any,
    *,
    detector: Detector | str = "mahalanobis",
    detector_params: dict[str, Any] | None = None,
    attack: str = "pgd",
    norm: str = "linf",
    eps: float = 0.3,
    fpr: float = 0.05,
    fit_limit: int = 1000,
    limit: int | None = None,
    fit_data: Any = None,
    labels: str | Path | None = None,
    adaptive: bool = True,
    adaptive_steps: int = 100,
    adaptive_weights: Sequence[float] = (1.0, 10.0, 0.1),
    seed: int = 0,
    out: str | Path | None = None,
    model_options: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
    **attack_params: Any,
) -> WorkflowResult:
    """Fit a detector on clean data, evaluate it against ``attack`` and the adaptive attack,
    and return (and write to ``out``/results.json) the results (kind ``detect``).

    The detector is fitted on ``fit_data`` (default: the ``train`` split of a built-in
    ``data``, else the inputs after the first ``limit``), at most ``fit_limit`` inputs, with the
    model's predictions as labels; it is evaluated on the first ``limit`` inputs of ``data``.
    ``detector_params`` are the named detector's hyper-parameters (None values are skipped)."""

    if fit_limit < 2:
        raise ConfigError(f"fit_limit must be >= 2, got {fit_limit}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    det = _detector(detector, detector_params)
    algo = create_all(attack, norm=norm, **attack_params)
    threat = ThreatModel(norm, eps)
    options = dict(data_options or {})
    if not isinstance(model, Classifier):  # files are read onto the model's bounds
        options["bounds"] = declared_bounds(model, dict(model_options or {}))
    full = as_dataset(data, labels, options)
    dataset = full.subset(limit) if limit is not None else full
    fit_x, fit_source = _fit_inputs(data, full, len(dataset.x), fit_data, fit_limit, options)
    if len(fit_x) < 2:
        raise DataError(
            "no clean inputs left to fit the detector on; pass --fit-data or a smaller --limit"
        )
    clf = as_classifier(model, dataset, dict(model_options or {}))
    lo, hi = clf.bounds
    clf, dataset = to_unit_box(clf, dataset)  # budgets are fractions of the bounds' width
    fit_x = ((fit_x - lo) / (hi - lo)).astype(np.float32) if (lo, hi) != (0.0, 1.0) else fit_x
    y = check_compatible(clf, dataset)
    fitted = det.fit(clf, fit_x)
    aware: DetectorAwarePGD | bool = False
    if adaptive:
        weights = tuple(float(w) for w in adaptive_weights)
        aware = DetectorAwarePGD(
            detector=fitted, threshold=0.0, steps=adaptive_steps, weights=weights
        )
    metrics = evaluate_detector(
        clf, fitted, dataset.x, y, algo, threat, fpr=fpr, adaptive=aware, seed=seed
    )
    results: dict[str, Any] = {
        **rundir.header(seed, "detection"),
        "model": clf.describe(),
        "data": dataset.to_dict(),
        "config": {
            "detector": {"name": fitted.name, **_describe(det)},
            "fit": {"source": fit_source, "n": len(fit_x), "labels": "model predictions"},
            "fpr": fpr,
        },
        "detection": metrics,
        "seconds": metrics["seconds"],
        "files": {},
    }
    return WorkflowResult.of("detect", results if out is None else write_results(out, results))


def _detector(detector: Detector | str, detector_params: dict[str, Any] | None) -> Detector:
    """The detector instance, or the named one built from its non-None hyper-parameters."""
    if not isinstance(detector, str):
        return detector
    params = {k: v for k, v in (detector_params or {}).items() if v is not None}
    det: Detector = DETECTORS.create(detector, **params)
    return det


def _fit_inputs(
    data: Any,
    full: Dataset,
    n_eval: int,
    fit_data: Any,
    fit_limit: int,
    options: dict[str, Any],
) -> tuple[np.ndarray, str]:
    """The clean inputs the detector is fitted on, and where they come from: ``fit_data``,
    else the train split of a built-in ``data``, else the inputs after the evaluated ones."""
    if fit_data is not None:
        return as_dataset(fit_data, None, options).x[:fit_limit], "fit data"
    builtin = isinstance(data, str) and data in _builtin_names()
    if builtin and options.get("split") in (None, "test"):
        fit_set = as_dataset(data, None, {**options, "split": "train"})
        return fit_set.x[:fit_limit], f"{data} train split"
    fit_x = full.x[n_eval : n_eval + fit_limit]
    return fit_x, f"inputs {n_eval}..{n_eval + len(fit_x) - 1} of the data"


def _builtin_names() -> set[str]:
    from aegis.io.data import BUILTINS

    return set(BUILTINS)


def _describe(det: Detector) -> dict[str, Any]:
    from dataclasses import fields, is_dataclass

    if not is_dataclass(det):
        return {}
    out: dict[str, Any] = {}
    for f in fields(det):
        v = getattr(det, f.name)
        out[f.name] = [getattr(s, "__name__", repr(s)) for s in v] if f.name == "squeezers" else v
    return out
