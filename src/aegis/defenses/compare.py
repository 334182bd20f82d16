"""One table for a base model and its defended versions: what each defense buys and costs.

``compare_defenses(base, data, models=[...], preprocess=[...])`` evaluates, on the same points,
with the same attack (default: the ``standard`` suite) and seed:

- the base model;
- each other model file (e.g. one written by ``aegis train --defense trades``), with the
  training time its sidecar records;
- the base model behind each preprocessing defense, attacked adaptively (BPDA/EOT), with the
  naive, misleading figure beside it.

Every row comes from :func:`aegis.api.run_attack`, so each is an ordinary evaluation with its
sanity checks; a row whose checks raised a warning sign is marked suspicious. Rows report clean
accuracy, clean macro precision/recall/F1, accuracy under attack (an upper bound on robust
accuracy), and seconds. Detection and certification have their own commands
(``aegis detect``, ``aegis certify``).

    >>> table = compare_defenses("models/mnist_cnn.safetensors", "mnist",
    ...     models=["models/mnist_cnn_trades.safetensors"], preprocess=["jpeg:quality=75"],
    ...     attack="standard", eps=0.3, limit=200)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aegis.api import AttackRun, run_attack
from aegis.errors import ConfigError
from aegis.io import rundir
from aegis.io.sidecar import read_sidecar

log = logging.getLogger(__name__)


def _row(name: str, kind: str, run: AttackRun) -> dict[str, Any]:
    m = run.metrics
    clean = m["clean"]
    row: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "n": m["n"],
        "clean_accuracy": m["clean_accuracy"],
        "clean_macro_precision": clean["macro_precision"],
        "clean_macro_recall": clean["macro_recall"],
        "clean_macro_f1": clean["macro_f1"],
        "adversarial_accuracy": m["adversarial_accuracy"],
        "suspicious": [f["name"] for f in run.results["sanity"] if f["flagged"]],
        "seconds": run.results["seconds"],
        "naive_adversarial_accuracy": None,
        "train_seconds": None,
    }
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
) -> dict[str, Any]:
    """Evaluate ``base``, each of ``models`` and ``base`` behind each of ``preprocess`` with the
    same attack on the same points; return (and write to ``out/results.json``) the table."""
    if not models and not preprocess:
        raise ConfigError("nothing to compare: give defended --model files or --preprocess steps")
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
    results: dict[str, Any] = {
        **rundir.header(seed, "defense-comparison"),
        "config": {**common, "base": str(base), "data": str(data)},
        "rows": rows,
    }
    return results if out is None else rundir.write_results(out, results)
