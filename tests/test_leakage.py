"""Leakage: model extraction (Copycat / Knockoff) and membership inference (threshold, LiRA)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aegis.errors import ConfigError
from aegis.io.data import load_dataset
from aegis.leakage import (
    BudgetExceeded,
    OutputPolicy,
    QueryOracle,
    SubstituteRecipe,
    TargetRecipe,
    attack_target,
    extract,
    lira_scores,
    membership_metrics,
    threshold_scores,
)
from aegis.model import Classifier, ModelInfo
from aegis.workflows.extract import run_extraction
from aegis.workflows.membership import run_membership
from aegis.zoo.train import train_classifier

FAST = SubstituteRecipe(arch="tiny_mlp", epochs=20, min_steps=100, lr=5e-3)


@pytest.fixture(scope="module")
def digits() -> dict[str, torch.Tensor]:
    x, y = load_dataset("digits", split="train").tensors()
    xt, yt = load_dataset("digits", split="test").tensors()
    assert y is not None and yt is not None
    return {"x": x, "y": y, "xt": xt, "yt": yt}


@pytest.fixture(scope="module")
def victim(digits: dict[str, torch.Tensor]) -> Classifier:
    return train_classifier(
        digits["x"][:700], digits["y"][:700], arch="tiny_mlp", epochs=30, lr=5e-3, seed=0
    )


def _query_only(fn: object, rows: list[int] | None = None) -> Classifier:
    def query(arr: np.ndarray) -> np.ndarray:
        if rows is not None:
            rows.append(arr.shape[0])
        return fn(arr)  # type: ignore[operator, no-any-return]

    return Classifier(None, ModelInfo(num_classes=10, input_shape=(1, 8, 8)), query_fn=query)


def _agree(a: Classifier, b: Classifier, x: torch.Tensor) -> float:
    return float((a.predict(x) == b.predict(x)).float().mean())


# -- extraction ------------------------------------------------------------------------------


def test_fidelity_grows_with_budget(victim: Classifier, digits: dict[str, torch.Tensor]) -> None:
    pool = digits["x"][700:]
    out = OutputPolicy.parse("labels")
    small, _ = extract(victim, pool, budget=50, output=out, recipe=FAST, seed=0)
    large, info = extract(victim, pool, budget=400, output=out, recipe=FAST, seed=0)
    assert info["queries"] == 400
    assert _agree(large, victim, digits["xt"]) > _agree(small, victim, digits["xt"]) + 0.05
    assert _agree(large, victim, digits["xt"]) > 0.85


def test_query_budget_is_counted_and_never_exceeded(
    victim: Classifier, digits: dict[str, torch.Tensor]
) -> None:
    rows: list[int] = []
    module = victim.module
    assert module is not None
    counted = _query_only(lambda a: module(torch.from_numpy(a)).detach().numpy(), rows)
    _, info = extract(
        counted, digits["x"][700:], budget=60, output=OutputPolicy.parse("scores"), recipe=FAST
    )
    assert sum(rows) == 60 == info["queries"]
    oracle = QueryOracle(counted, budget=10, output=OutputPolicy.parse("labels"))
    oracle.query(digits["x"][:7])
    with pytest.raises(BudgetExceeded, match="budget of 10 exceeded"):
        oracle.query(digits["x"][:4])
    assert oracle.used == 7 and sum(rows) == 67  # the refused query never reached the victim


def test_labels_only_never_sees_scores(victim: Classifier, digits: dict[str, torch.Tensor]) -> None:
    """Two victims with the same top-1 labels but different scores give the Copycat attacker
    the same answers, hence the same substitute; with scores the answers differ."""
    module = victim.module
    assert module is not None

    def one_hot(a: np.ndarray) -> np.ndarray:
        labels = module(torch.from_numpy(a)).argmax(1)
        return (5.0 * torch.nn.functional.one_hot(labels, 10).float()).numpy()

    other = _query_only(one_hot)
    x = digits["x"][700:800]
    labels = OutputPolicy.parse("labels")
    answer = QueryOracle(victim, budget=100, output=labels).query(x)
    assert answer.dtype == torch.int64 and answer.shape == (100,)
    scores = OutputPolicy.parse("scores")
    a = QueryOracle(victim, budget=100, output=scores).query(x)
    b = QueryOracle(other, budget=100, output=scores).query(x)
    assert not torch.allclose(a, b)
    pool = digits["x"][700:]
    sub_a, _ = extract(victim, pool, budget=120, output=labels, recipe=FAST, seed=3)
    sub_b, _ = extract(other, pool, budget=120, output=labels, recipe=FAST, seed=3)
    assert torch.equal(sub_a.logits(digits["xt"]), sub_b.logits(digits["xt"]))


def test_transfer_from_an_exact_copy_is_white_box(
    victim: Classifier, digits: dict[str, torch.Tensor]
) -> None:
    from aegis.leakage import transfer_attack

    t = transfer_attack(victim, victim, digits["xt"][:60], digits["yt"][:60], eps=0.3, steps=10)
    assert t["n"] == 60 and t["victim_correct"] > 50
    assert t["success_rate"] > 0.9
    assert t["success_rate"] == t["substitute_success_rate"]
    assert t["attack"]["early_stop"] is False


def test_rounding_policy() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.1], [0.0, 0.0, 3.0]])
    p = OutputPolicy.parse("round:1").apply(logits)
    assert torch.allclose(p * 10, torch.round(p * 10))
    assert torch.allclose(p[0], torch.tensor([0.7, 0.2, 0.1]))
    assert OutputPolicy.parse("round:2").name == "round:2"
    assert OutputPolicy.parse("round:2").method == "knockoff"
    assert OutputPolicy.parse("labels").method == "copycat"


def test_soft_targets_of_one_hot_match_hard_labels(digits: dict[str, torch.Tensor]) -> None:
    x, y = digits["x"][:200], digits["y"][:200]
    hard = train_classifier(x, y, arch="tiny_mlp", epochs=3, seed=1)
    soft = train_classifier(
        x,
        y,
        arch="tiny_mlp",
        epochs=3,
        seed=1,
        soft_targets=torch.nn.functional.one_hot(y, 10).float(),
    )
    assert torch.allclose(hard.logits(x), soft.logits(x), atol=1e-4)


def test_extraction_reproducible(victim: Classifier, digits: dict[str, torch.Tensor]) -> None:
    pool = digits["x"][700:]
    out = OutputPolicy.parse("round:2")
    a, _ = extract(victim, pool, budget=80, output=out, recipe=FAST, seed=5)
    b, _ = extract(victim, pool, budget=80, output=out, recipe=FAST, seed=5)
    assert torch.equal(a.logits(digits["xt"]), b.logits(digits["xt"]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budgets": [0]}, "budgets must be >= 1"),
        ({"budgets": [100000]}, "exceeds the query pool"),
        ({"outputs": ["probs"]}, "output must be labels, scores or round:N"),
        ({"outputs": ["round:x"]}, "round:N needs an integer"),
        ({"transfer_limit": -1}, "transfer_limit must be >= 0"),
    ],
)
def test_extraction_bad_input(victim: Classifier, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        run_extraction(victim, "digits", **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_oracle_budget_below_one(victim: Classifier) -> None:
    with pytest.raises(ConfigError, match="budget must be >= 1") as err:
        QueryOracle(victim, budget=0, output=OutputPolicy.parse("labels"))
    assert "\n" not in str(err.value)


# -- membership ------------------------------------------------------------------------------


def test_metrics_on_a_hand_made_case() -> None:
    m = membership_metrics(np.array([3.0, 4.0, 5.0, 6.0]), np.array([0.0, 1.0, 2.0, 3.5]))
    assert m["roc_auc"] == pytest.approx(15 / 16)
    # 4 non-members: 1% FPR allows no false positive, so the threshold is the top one (3.5)
    assert m["tpr_at_0.01_fpr"] == pytest.approx(0.75)
    assert m["fpr_at_0.01_fpr"] == 0.0
    # LiRA with one example: in-models give φ 1 and 3 (μ 2, σ 1), out-models −1 and 1 (μ 0, σ 1)
    phi = np.array([[1.0], [3.0], [-1.0], [1.0]])
    inn = np.array([[True], [True], [False], [False]])
    s = lira_scores(np.array([2.0]), phi, inn)
    assert s["lira-online"][0] == pytest.approx(2.0)  # log N(2;2,1) − log N(2;0,1)
    assert s["lira-offline"][0] == pytest.approx(2.0)
    assert lira_scores(np.array([0.0]), phi, inn)["lira-online"][0] == pytest.approx(-2.0)


def test_membership_beats_chance_on_an_overfit_model() -> None:
    results = run_membership(
        "mnist",
        recipe=TargetRecipe(arch="tiny_mlp", epochs=30, lr=5e-3, batch_size=32),
        variants=["base"],
        shadows=2,
        limit=120,
    )
    row = results["membership"]["variants"][0]
    assert row["train_accuracy"] - row["test_accuracy"] > 0.2  # it overfits
    assert row["attacks"]["threshold"]["roc_auc"] > 0.7
    assert row["attacks"]["lira-online"]["roc_auc"] > 0.7
    assert results["config"]["members"] == 60


def test_membership_near_chance_when_nobody_is_a_member(digits: dict[str, torch.Tensor]) -> None:
    x, y = digits["x"], digits["y"]
    recipe = TargetRecipe(arch="tiny_mlp", epochs=30, lr=5e-3)
    target = recipe.train(x[:300], y[:300], num_classes=10, seed=0)
    cand_x, cand_y = x[300:700], y[300:700]  # none of them trained the target
    fake = np.random.default_rng(0).permutation(400) < 200
    scores = attack_target(target, cand_x, cand_y, recipe, shadows=2, seed=0)
    for name, s in scores.items():
        auc = membership_metrics(s[fake], s[~fake])["roc_auc"]
        assert abs(auc - 0.5) < 0.1, name
    assert threshold_scores(target, cand_x[:3], cand_y[:3]).shape == (3,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shadows": 0}, "shadows must be >= 1"),
        ({"member_fraction": 0.0}, r"member_fraction must be in \(0, 1\)"),
        ({"member_fraction": 1.5}, r"member_fraction must be in \(0, 1\)"),
        ({"variants": ["decay=1"]}, "use base or KEY=VALUE"),
        ({"variants": ["wd=x"]}, "needs a number"),
        ({"limit": 2}, "limit must be >= 4"),
    ],
)
def test_membership_bad_input(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        run_membership("digits", **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_membership_reproducible() -> None:
    recipe = TargetRecipe(arch="tiny_mlp", epochs=5, lr=5e-3)
    a = run_membership("digits", recipe=recipe, variants=["wd=1e-3"], shadows=1, limit=80)
    b = run_membership("digits", recipe=recipe, variants=["wd=1e-3"], shadows=1, limit=80)
    assert a["membership"]["variants"][0]["attacks"] == b["membership"]["variants"][0]["attacks"]
    assert a["membership"]["variants"][0]["recipe"]["weight_decay"] == 1e-3


# -- CLI -------------------------------------------------------------------------------------


def test_cli_extract_and_membership(victim: Classifier, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aegis.cli import app

    module = victim.module
    assert isinstance(module, torch.nn.Module)
    model = tmp_path / "victim.pt"
    torch.jit.save(torch.jit.trace(module, torch.zeros(2, 1, 8, 8)), str(model))
    runner = CliRunner()
    out = tmp_path / "extract"
    res = runner.invoke(
        app,
        [
            "extract",
            str(model),
            "digits",
            "--budgets",
            "40,80",
            "--outputs",
            "labels,round:1",
            "--arch",
            "tiny_mlp",
            "--epochs",
            "5",
            "--min-steps",
            "20",
            "--steps",
            "5",
            "--transfer-limit",
            "20",
            "--limit",
            "100",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "fidelity" in res.output and "copycat" in res.output
    data = json.loads((out / "results.json").read_text())
    assert data["kind"] == "extraction" and data["schema"] == "aegis.results/1"
    runs = data["extraction"]["runs"]
    assert [(r["output"], r["budget"], r["queries"]) for r in runs] == [
        ("labels", 40, 40),
        ("labels", 80, 80),
        ("round:1", 40, 40),
        ("round:1", 80, 80),
    ]
    assert {"substitute_accuracy", "fidelity", "transfer"} <= set(runs[0])
    assert runs[0]["transfer"]["n"] == 20
    assert set(data["extraction"]["curves"]) == {"labels", "round:1"}
    assert (out / data["files"]["fidelity_curve"]).is_file()

    out = tmp_path / "membership"
    res = runner.invoke(
        app,
        [
            "membership",
            "digits",
            "--limit",
            "80",
            "--shadows",
            "1",
            "--variants",
            "base,wd=1e-3",
            "--arch",
            "tiny_mlp",
            "--epochs",
            "3",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "lira-online" in res.output
    data = json.loads((out / "results.json").read_text())
    assert data["kind"] == "membership"
    rows = data["membership"]["variants"]
    assert [r["variant"] for r in rows] == ["base", "wd=1e-3"]
    assert set(rows[0]["attacks"]) == {"threshold", "lira-online", "lira-offline"}
    assert {"roc_auc", "tpr_at_0.01_fpr", "tpr_at_0.001_fpr"} <= set(
        rows[0]["attacks"]["lira-online"]
    )


def test_cli_bad_budget_is_one_line(cli, victim: Classifier, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    module = victim.module
    assert isinstance(module, torch.nn.Module)
    model = tmp_path / "victim.pt"
    torch.jit.save(torch.jit.trace(module, torch.zeros(2, 1, 8, 8)), str(model))
    code, _, err = cli("extract", str(model), "digits", "--budgets", "0", "--out", str(tmp_path))
    assert code == 1
    assert err.strip().count("\n") == 0 and "budgets must be >= 1" in err
