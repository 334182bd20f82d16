"""What got better or worse between two runs: ``aegis compare RUN_A RUN_B``.

Both runs are read from their ``results.json`` only. Every number in the result sections
(attack metrics, per-class precision/recall/F1, defense-comparison rows, detection,
certification, poisoning and leakage figures) is paired by its dotted path; lists of rows are
paired by their ``name``, per-class lists by class index. Provenance (versions, seeds,
configuration, timings, per-sample records and the gallery) is not compared, but a difference
in what was run (kind, data, attack, threat) is reported first, because it makes the figures
incomparable.

A change is judged from the model owner's side by the metric's name:

- higher is **better** for accuracies, precision, recall, F1, detection AUC and TPR, certified
  radii and (in minimal-norm results) perturbation norms;
- higher is **worse** for attack success rates, backdoor success, the share of clean inputs a
  detector flags, abstain rates, and every figure of a leakage run (membership AUC and TPR,
  extraction fidelity, agreement and transfer success: the attacker's figures);
- anything else is reported as *changed*, not judged.

``gate(diff, tolerance)`` lists the judged metrics that got worse by more than ``tolerance``
(absolute); ``aegis compare --fail-on-worse`` exits with the gate code on any.

    >>> d = compare_results(read_results(Path("runs/v1")), read_results(Path("runs/v2")))
    >>> [r["path"] for r in gate(d, 0.01)]
"""

from __future__ import annotations

import math
import re
from typing import Any

SKIP = frozenset(
    {
        "schema",
        "created",
        "command",
        "versions",
        "seed",
        "config",
        "model",
        "data",
        "sanity",
        "seconds",
        "records",
        "gallery",
        "files",
        "certificates",
        "out_dir",
    }
)
"""Top-level sections that are provenance or per-sample data, not figures to compare."""

_SKIP_PARTS = frozenset(
    {"confusion", "seconds", "calls", "support", "train_seconds", "seed", "threshold"}
)
_LEAKAGE = ("membership", "extraction")
_BETTER = ("accuracy", "precision", "recall", "f1", "auc", "tpr", "radius")


def flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves by dotted path; rows with a ``name`` are keyed by it."""
    out: dict[str, float] = {}
    if isinstance(value, bool) or value is None:
        return out
    if isinstance(value, (int, float)):
        if math.isfinite(float(value)):
            out[prefix] = float(value)
        return out
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k) in _SKIP_PARTS:
                continue
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list):
        named = all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in value)
        for i, v in enumerate(value):
            key = v["name"] if named and value else str(i)
            out.update(flatten(v, f"{prefix}[{key}]" if prefix else f"[{key}]"))
    return out


def _leaf(path: str) -> str:
    """The last named part of a path (``metrics.clean.recall.3`` → ``recall``)."""
    parts = [q for q in re.split(r"[.\[\]]", path.lower()) if q and not q.isdigit()]
    return parts[-1] if parts else ""


def direction(path: str, kind: str | None) -> int:
    """+1: higher is better for the model owner, −1: higher is worse, 0: not judged (counts,
    sizes, timings and anything not named as a share or a score)."""
    p, leaf = path.lower(), _leaf(path)
    if kind in _LEAKAGE:
        return -1 if any(w in leaf for w in ("auc", "tpr", "fidelity", "agreement", "rate")) else 0
    if leaf == "clean_flagged" or "abstain" in leaf:
        return -1
    if "rate" in leaf or leaf == "success":
        return -1 if ("success" in p or "backdoor" in p) else (1 if "detection" in leaf else 0)
    if "minimal" in p and leaf in ("median", "mean"):
        return 1
    if any(w in leaf for w in _BETTER):
        return 1
    return 0


def _what_ran(results: dict[str, Any]) -> dict[str, Any]:
    config = results.get("config") or {}
    data = results.get("data") or {}
    return {
        "kind": results.get("kind", "attack"),
        "data": data.get("name") if isinstance(data, dict) else data,
        "n": data.get("n") if isinstance(data, dict) else None,
        "attack": config.get("attack") if isinstance(config, dict) else None,
        "threat": config.get("threat") if isinstance(config, dict) else None,
    }


def compare_results(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Pair every figure of run ``a`` with run ``b``'s: rows with both values, the change,
    and whether it is better, worse, changed (not judged) or the same."""
    kind = b.get("kind", a.get("kind"))
    fa = flatten({k: v for k, v in a.items() if k not in SKIP})
    fb = flatten({k: v for k, v in b.items() if k not in SKIP})
    rows: list[dict[str, Any]] = []
    for path in sorted(set(fa) & set(fb)):
        va, vb = fa[path], fb[path]
        delta = vb - va
        sign = direction(path, kind if isinstance(kind, str) else None)
        if abs(delta) <= 1e-12:
            verdict = "same"
        elif sign == 0:
            verdict = "changed"
        else:
            verdict = "better" if delta * sign > 0 else "worse"
        rows.append({"path": path, "a": va, "b": vb, "delta": delta, "change": verdict})
    ran_a, ran_b = _what_ran(a), _what_ran(b)
    return {
        "rows": rows,
        "only_in_a": sorted(set(fa) - set(fb)),
        "only_in_b": sorted(set(fb) - set(fa)),
        "setup_differences": {
            k: {"a": ran_a[k], "b": ran_b[k]} for k in ran_a if ran_a[k] != ran_b[k]
        },
        "counts": counts(rows),
    }


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many rows got better, worse, changed (not judged) or stayed the same."""
    return {c: sum(r["change"] == c for r in rows) for c in ("better", "worse", "changed", "same")}


def gate(diff: dict[str, Any], tolerance: float) -> list[dict[str, Any]]:
    """The judged rows that got worse by more than ``tolerance`` (absolute)."""
    return [r for r in diff["rows"] if r["change"] == "worse" and abs(r["delta"]) > tolerance]
