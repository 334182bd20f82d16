"""``aegis inspect MODEL [DATA]``: what aegis sees in a model file, before anything is attacked.

The first command a new user runs on their own file: the format, the input shape and layout,
the classes, the bounds, the normalization, whether the outputs are logits or probabilities and
whether gradients flow, each with where aegis got it (flag, sidecar, inferred, default). Given
labeled data, the clean accuracy too, scored with each common normalization so a missing one
shows. ``write_sidecar`` keeps the answer in ``<model>.json`` for the next run.

    >>> report = inspect_model("net.onnx", "x.npz")
    >>> report["clean_accuracy"], report["normalization"]["hint"]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from aegis.errors import ModelError
from aegis.io.data import Dataset
from aegis.io.inputs import load_inputs
from aegis.io.sidecar import read_sidecar, sidecar_path, write_sidecar
from aegis.model import Classifier
from aegis.normalization import PRESETS, check_normalization
from aegis.workflows.result import WorkflowResult

PROBE = 512
"""Labeled inputs scored for the clean accuracy and the normalization check."""


def inspect_model(
    model: str | Path,
    data: str | Path | None = None,
    *,
    labels: str | Path | None = None,
    limit: int | None = None,
    model_options: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
    write: bool = False,
) -> WorkflowResult:
    """What aegis sees in ``model`` (and, with ``data``, how well it classifies it); with
    ``write``, the metadata (and a normalization that fits clearly better) go to the
    model's sidecar, merged into an existing one (the result's ``paths["sidecar"]``). Kind
    ``inspect``; no run directory."""
    options = dict(model_options or {})
    dataset: Dataset | None = None
    if data is None:
        from aegis.io.models import load_classifier

        clf = load_classifier(str(model), **options)
    else:
        clf, dataset, _ = load_inputs(
            model, data, labels, limit or PROBE, data_options, options, unlabeled=True
        )
    report = _describe(clf)
    if dataset is not None:
        report["data"] = dataset.to_dict()
        report.update(_scores(clf, dataset))
    written: dict[str, Path] = {}
    if write:
        written["sidecar"] = _write(Path(model), clf, report)
        report["sidecar_written"] = str(written["sidecar"])
    return WorkflowResult.of("inspect", report, extra=written)


def _describe(clf: Classifier) -> dict[str, Any]:
    prov = clf.provenance
    info = clf.own_info or clf.info
    return {
        "model": str(clf.source or clf.name),
        "format": prov.get("format", "in-memory"),
        "input_shape": list(info.input_shape),
        "layout": info.layout,
        "num_classes": info.num_classes,
        "bounds": list(info.bounds),
        "mean": info.mean,
        "std": info.std,
        "outputs": prov.get("outputs", "logits (not probabilities)"),
        "white_box": clf.differentiable,
        "provenance": dict(prov),
    }


def _scores(clf: Classifier, dataset: Dataset) -> dict[str, Any]:
    if dataset.y is None:
        return {"clean_accuracy": None, "labels": "none in the data: no accuracy to measure"}
    x, y = torch.from_numpy(dataset.x), torch.from_numpy(dataset.y)
    with torch.no_grad():
        accuracy = float((clf.predict(x).cpu() == y).float().mean())
    found = check_normalization(clf, x, y)
    norm = None
    if found is not None:
        norm = {"accuracy": found.accuracy, "best": found.best, "hint": found.hint}
    return {"clean_accuracy": accuracy, "n": len(y), "normalization": norm}


def _write(model: Path, clf: Classifier, report: dict[str, Any]) -> Path:
    """Merge what was found into ``<model>.json`` (a sidecar of another kind is refused)."""
    existing = sidecar_path(model)
    merged: dict[str, Any] = dict(read_sidecar(model))  # <model>.json, else the folder's
    if "class_name" in merged and "config" in merged:
        raise ModelError(
            f"{existing} holds a Keras architecture (model.to_json()), not aegis metadata; "
            "move it, or pass the metadata as flags"
        )
    extra = {k: v for k, v in merged.items() if k not in _META}
    norm = report.get("normalization") or {}
    info = clf.own_info or clf.info
    if norm.get("hint") and norm.get("best") in PRESETS:
        mean, std = PRESETS[norm["best"]]
        info = dataclasses.replace(info, mean=mean, std=std)
        extra["normalization"] = f"{norm['best']}: chosen by aegis inspect ({norm['hint']})"
    return write_sidecar(model, info, **extra)


_META = ("num_classes", "input_shape", "bounds", "mean", "std", "layout")
