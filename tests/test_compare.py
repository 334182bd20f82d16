"""``aegis compare``: figures paired by path, judged from the model owner's side, and a gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aegis.cli import EXIT_ERROR, EXIT_GATE, EXIT_OK
from aegis.io.rundir import SCHEMA
from aegis.report.diff import compare_results, direction, flatten, gate


def attack_run(adv: float, recall3: float, success: float) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "seed": 0,
        "data": {"name": "digits", "n": 100},
        "config": {"attack": "pgd", "threat": {"norm": "linf", "eps": 0.1}},
        "seconds": 3.0 * adv,  # a timing: never compared
        "metrics": {
            "clean_accuracy": 0.98,
            "adversarial_accuracy": adv,
            "success": {"rate": success, "successes": int(100 * success)},
            "adversarial": {"recall": [0.5, 0.5, 0.5, recall3], "macro_f1": adv},
            "calls": {"gradients": 1000},
        },
    }


def test_directions_follow_the_model_owner() -> None:
    assert direction("metrics.adversarial_accuracy", None) == 1
    assert direction("metrics.adversarial.recall[3]", None) == 1
    assert direction("metrics.success.rate", None) == -1
    assert direction("metrics.success.successes", None) == 0  # a count, not a share
    assert direction("poisoning.models.poisoned.backdoor.rate", "poisoning") == -1
    assert direction("poisoning.models.poisoned.clean_accuracy", "poisoning") == 1
    assert direction("detection.non_adaptive.roc_auc", "detection") == 1
    assert direction("detection.clean_flagged", "detection") == -1
    assert direction("membership.attacks.lira.roc_auc", "membership") == -1  # leakage
    assert direction("extraction.budgets[0].fidelity", "extraction") == -1
    assert direction("minimal.l2.median", None) == 1
    assert direction("metrics.norms.l2.median", None) == 0


def test_figures_are_paired_by_path_rows_by_name() -> None:
    flat = flatten(
        {
            "rows": [
                {"name": "base", "adversarial_accuracy": 0.5},
                {"name": "pgd", "adversarial_accuracy": 0.7},
            ]
        }
    )
    assert flat == {"rows[base].adversarial_accuracy": 0.5, "rows[pgd].adversarial_accuracy": 0.7}
    assert flatten({"x": [0.1, True, None, float("nan")]}) == {"x[0]": 0.1}
    a = {
        "schema": SCHEMA,
        "kind": "defense-comparison",
        "rows": [{"name": "base", "adversarial_accuracy": 0.5}],
    }
    b = {
        "schema": SCHEMA,
        "kind": "defense-comparison",
        "rows": [
            {"name": "pgd", "adversarial_accuracy": 0.9},
            {"name": "base", "adversarial_accuracy": 0.4},
        ],
    }
    d = compare_results(a, b)
    assert [(r["path"], r["change"]) for r in d["rows"]] == [
        ("rows[base].adversarial_accuracy", "worse")
    ]
    assert d["only_in_b"] == ["rows[pgd].adversarial_accuracy"] and d["only_in_a"] == []


def test_a_worse_model_fails_the_gate_and_a_better_one_passes() -> None:
    v1, v2 = attack_run(0.60, 0.6, 0.30), attack_run(0.50, 0.4, 0.45)
    d = compare_results(v1, v2)
    changes = {r["path"]: r["change"] for r in d["rows"]}
    assert changes["metrics.adversarial_accuracy"] == "worse"
    assert changes["metrics.adversarial.recall[3]"] == "worse"
    assert changes["metrics.success.rate"] == "worse"
    assert changes["metrics.clean_accuracy"] == "same"
    assert changes["metrics.success.successes"] == "changed"
    assert not any(p.startswith(("seconds", "metrics.calls")) for p in changes)
    assert {r["path"] for r in gate(d, 0.12)} == {
        "metrics.success.rate",
        "metrics.adversarial.recall[3]",
    }
    back = compare_results(v2, v1)
    assert gate(back, 0.0) == [] and back["counts"]["better"] == 4


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "v1", tmp_path / "v2"
    for d, run in ((a, attack_run(0.60, 0.6, 0.30)), (b, attack_run(0.55, 0.6, 0.30))):
        d.mkdir()
        (d / "results.json").write_text(json.dumps(run))
    return a, b


def test_compare_command_gate_and_errors(runs: tuple[Path, Path], cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = runs
    code, out, _ = cli(
        "compare", str(a), str(b), "--fail-on-worse", "0.01", "--json", str(tmp_path / "d.json")
    )
    assert code == EXIT_GATE
    assert "metrics.adversarial_accuracy" in out and "gate FAILED" in out
    saved = json.loads((tmp_path / "d.json").read_text())
    assert saved["counts"]["worse"] == 2  # accuracy and macro F1
    code, out, _ = cli("compare", str(a), str(b), "--fail-on-worse", "0.1")
    assert code == EXIT_OK and "gate passed" in out
    code, out, _ = cli("compare", str(a), str(b), "--only", "recall")
    assert code == EXIT_OK and "adversarial_accuracy" not in out
    code, _, err = cli("compare", str(a), str(tmp_path / "missing"))
    assert code == EXIT_ERROR and len(err.strip().splitlines()) == 1 and "run directory" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{not json")
    code, _, err = cli("compare", str(a), str(tmp_path / "bad"))
    assert code == EXIT_ERROR and len(err.strip().splitlines()) == 1
