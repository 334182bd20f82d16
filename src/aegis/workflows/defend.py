"""The defend workflow (``aegis defend``): one table for a base model and its defended
versions, what each defense buys and costs.

``compare_defenses(base, data, models=[...], preprocess=[...])`` evaluates, on the same points,
with the same attack (default: the ``standard`` suite) and seed:

- the base model;
- each other model file (e.g. one written by ``aegis train --defense trades``), with the
  training time its sidecar records;
- the base model behind each preprocessing defense, attacked adaptively (BPDA/EOT), with the
  naive, misleading figure beside it.

- the base model with each detector of adversarial inputs (``detectors``), fitted on clean
  data: its ROC-AUC against the attack and the robust accuracy of classifier + detector, the
  worst case per input of the attack and the detector-aware adaptive attack
  (:func:`aegis.workflows.detect.run_detect`);
- each model behind randomized smoothing (``smoothed``, e.g. one written by ``aegis certify
  --train``): its certified L2 accuracy at ``certify_radii`` (Cohen et al.; a guarantee, not
  an attack's upper bound) and its clean accuracy as a smoothed classifier
  (:func:`aegis.workflows.certify.run_certify`).

Every attacked row comes from :func:`aegis.workflows.attack.run_attack`, so each is an
ordinary evaluation with its sanity checks; a row whose checks raised a warning sign is marked
suspicious. Rows report clean accuracy, clean macro precision/recall/F1, accuracy under attack
(an upper bound on robust accuracy), detection AUC, certified accuracy, training time and
seconds; a column that does not apply to a row is ``None``.

    >>> table = compare_defenses("models/mnist_cnn.safetensors", "mnist",
    ...     models=["models/mnist_cnn_trades.safetensors"], preprocess=["jpeg:quality=75"],
    ...     attack="standard", eps=0.3, limit=200)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aegis.errors import ConfigError
from aegis.io import rundir
from aegis.io.sidecar import read_sidecar
from aegis.metrics import precision_recall_f1
from aegis.workflows.attack import AttackRun, run_attack
from aegis.workflows.result import WorkflowResult
from aegis.workflows.rundir_writer import write_results

log = logging.getLogger(__name__)


COLUMNS = (
    "name",
    "kind",
    "n",
    "clean_accuracy",
    "clean_macro_precision",
    "clean_macro_recall",
    "clean_macro_f1",
    "adversarial_accuracy",
    "suspicious",
    "seconds",
    "naive_adversarial_accuracy",
    "detection_auc",
    "certified_accuracy",
    "train_seconds",
)
"""Every row has these keys; a column that does not apply to a row is None."""


def _blank(name: str, kind: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(name=name, kind=kind, suspicious=[])
    row.update(values)
    return row


def _row(name: str, kind: str, run: AttackRun) -> dict[str, Any]:
    m = run.metrics
    clean = m["clean"]
    row = _blank(
        name,
        kind,
        n=m["n"],
        clean_accuracy=m["clean_accuracy"],
        clean_macro_precision=clean["macro_precision"],
        clean_macro_recall=clean["macro_recall"],
        clean_macro_f1=clean["macro_f1"],
        adversarial_accuracy=m["adversarial_accuracy"],
        suspicious=[f["name"] for f in run.results["sanity"] if f["flagged"]],
        seconds=run.results["seconds"],
    )
    defense = run.results.get("defense")
    if defense and defense.get("naive"):
        row["naive_adversarial_accuracy"] = defense["naive"]["adversarial_accuracy"]
    return row


def compare_defenses(
    base: str | Path,
    data: str | Path,
    *,
    models: Sequence[str | Path] = (),
    preprocess: Sequence[str] = (),
    attack: str = "standard",
    norm: str = "linf",
    eps: float = 0.3,
    labels: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    out: str | Path | None = None,
    detectors: Sequence[str] = (),
    smoothed: Sequence[str | Path] = (),
    sigma: float = 0.25,
    certify_samples: int = 1000,
    certify_radii: Sequence[float] = (0.5, 1.0),
) -> WorkflowResult:
    """Evaluate ``base``, each of ``models``, ``base`` behind each of ``preprocess`` and with
    each of ``detectors``, and each of ``smoothed`` (certified, noise ``sigma``, ``certify_samples``
    noise samples per input) on the same points; return (and write to ``out/results.json``)
    the table (kind ``defend``)."""
    if not models and not preprocess and not detectors and not smoothed:
        raise ConfigError(
            "nothing to compare: give defended --model files, --preprocess steps, --detector "
            "names or --smoothed model files"
        )
    common: dict[str, Any] = {
        "attack": attack,
        "norm": norm,
        "eps": eps,
        "labels": labels,
        "limit": limit,
        "seed": seed,
        "batch_size": batch_size,
    }
    rows = [_row(Path(base).name, "base", run_attack(base, data, **common))]
    for path in models:
        row = _row(Path(path).name, "trained", run_attack(path, data, **common))
        side = read_sidecar(Path(path))
        row["train_seconds"] = side.get("train_seconds", side.get("seconds"))
        row["defense"] = side.get("defense")
        rows.append(row)
    for spec in preprocess:
        run = run_attack(base, data, preprocess=[spec], compare_naive=True, **common)
        rows.append(_row(f"{Path(base).name} + {spec}", "preprocess", run))
    for name in detectors:
        rows.append(_detector_row(base, data, name, common))
    radii = sorted(float(r) for r in certify_radii)
    if smoothed and (not radii or any(not r > 0 for r in radii)):
        raise ConfigError(f"certify radii must be > 0, got {list(certify_radii)}")
    for path in smoothed:
        rows.append(_smoothed_row(path, data, sigma, certify_samples, radii, common))
    results: dict[str, Any] = {
        **rundir.header(seed, "defense-comparison"),
        "config": {
            **common,
            "base": str(base),
            "data": str(data),
            "smoothing": {"sigma": sigma, "n": certify_samples, "radii": radii}
            if smoothed
            else None,
        },
        "rows": rows,
    }
    return WorkflowResult.of("defend", results if out is None else write_results(out, results))


def _detector_row(
    base: str | Path, data: str | Path, name: str, common: dict[str, Any]
) -> dict[str, Any]:
    """The base model with a detector: clean figures of the combined system, its ROC-AUC
    against the attack, and the worst case of the attack and the adaptive attack."""
    from aegis.workflows.detect import run_detect

    det = run_detect(
        base,
        data,
        detector=name,
        attack=common["attack"],
        norm=common["norm"],
        eps=common["eps"],
        labels=common["labels"],
        limit=common["limit"],
        seed=common["seed"],
    )["detection"]
    na = det["non_adaptive"]
    worst = det.get("worst_case", {}).get("robust_accuracy", na["combined"]["robust_accuracy"])
    return _blank(
        f"{Path(base).name} + {name} detector",
        "detector",
        n=det["n"],
        # The combined system answers "adversarial" on flagged clean inputs: that is its
        # clean accuracy; per-class precision/recall are the classifier's (base row).
        clean_accuracy=na["combined"]["clean_accuracy"],
        adversarial_accuracy=worst,
        detection_auc=na["roc_auc"],
        detection_tpr=na["tpr"],
        clean_flagged=det["clean_flagged"],
        seconds=det["seconds"],
    )


def _smoothed_row(
    path: str | Path,
    data: str | Path,
    sigma: float,
    samples: int,
    radii: list[float],
    common: dict[str, Any],
) -> dict[str, Any]:
    """A model behind randomized smoothing: certified accuracy at each radius."""
    from aegis.defenses.certification import Smoothing
    from aegis.workflows.certify import run_certify

    smoothing = Smoothing(sigma=sigma, n=samples, n0=min(100, samples))
    cert = run_certify(
        path,
        data,
        smoothing=smoothing,
        radii=radii,
        labels=common["labels"],
        limit=common["limit"],
        seed=common["seed"],
    )
    summary = cert["certification"]
    side = read_sidecar(Path(path))
    # An abstain is a class of its own that no input has: it lowers recall, never precision.
    k = int(cert["model"]["num_classes"])
    pred = np.asarray(cert["certificates"]["prediction"], dtype=np.int64)
    y = np.asarray(cert["certificates"]["y"], dtype=np.int64)
    prf = precision_recall_f1(y, np.where(pred < 0, k, pred), k + 1)
    return _blank(
        f"{Path(path).name} smoothed σ={sigma:g}",
        "smoothed",
        n=summary["n"],
        clean_accuracy=summary["accuracy"],
        clean_macro_precision=prf["macro_precision"],
        clean_macro_recall=prf["macro_recall"],
        clean_macro_f1=prf["macro_f1"],
        seconds=summary["seconds"],
        certified_accuracy={
            f"{c['radius']:g}": c["accuracy"] for c in summary["certified_accuracy"]
        },
        abstain_rate=summary["abstain_rate"],
        train_seconds=side.get("train_seconds", side.get("seconds")),
    )
