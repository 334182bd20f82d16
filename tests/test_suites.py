"""Suites (the AutoAttack-style standard protocol), sweeps and minimal-norm curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aegis.api import run_attack
from aegis.engine import evaluate
from aegis.errors import ConfigError
from aegis.metrics import accuracy_at, minimal_norms
from aegis.registry import create, create_all, expand, get_spec, list_attacks, list_ensembles
from aegis.threat import ThreatModel

AUTOATTACK_STANDARD = {
    "linf": [
        ("apgd-ce", {"steps": 100, "restarts": 1}),
        ("apgd-t", {"steps": 100, "restarts": 1, "target_classes": 9}),
        ("fab-t", {"steps": 100, "restarts": 1, "target_classes": 9}),
        ("square", {"queries": 5000, "restarts": 1, "p_init": 0.8, "rescale_schedule": False}),
    ],
}


def test_standard_has_autoattack_budgets() -> None:
    """PITFALLS: a suite named after a published protocol uses its budgets exactly."""
    assert expand("standard", "linf") == AUTOATTACK_STANDARD["linf"]
    assert expand("standard", "l2") == AUTOATTACK_STANDARD["linf"]
    for attack, (name, params) in zip(
        create_all("standard", norm="linf"), AUTOATTACK_STANDARD["linf"], strict=True
    ):
        assert attack.registry_name == name
        assert {k: getattr(attack, k) for k in params} == params


@pytest.mark.parametrize("suite", [s.name for s in list_ensembles()])
def test_every_suite_member_exists_and_supports_the_norm(suite) -> None:
    for norm in next(s for s in list_ensembles() if s.name == suite).norms:
        members = create_all(suite, norm=norm)
        assert members
        for m in members:
            assert norm in get_spec(m.registry_name).norms, (suite, norm, m.registry_name)


def test_fixed_suite_refuses_overrides_fast_accepts() -> None:
    with pytest.raises(ConfigError, match="published budgets"):
        create_all("standard", norm="linf", steps=10)
    fast = create_all("fast", norm="linf", steps=7)
    assert [a.steps for a in fast] == [7, 7]  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="defined for norms"):
        create_all("standard", norm="l0")
    with pytest.raises(ConfigError, match="did you mean 'standard'"):
        create_all("standart", norm="linf")


def test_suite_name_cannot_shadow_an_attack() -> None:
    from aegis.registry import EnsembleSpec, register_ensemble

    with pytest.raises(ConfigError, match="registered twice"):
        register_ensemble(EnsembleSpec("pgd", {"linf": (("fgsm", {}),)}, "", ""))


def test_fast_suite_per_sample_worst_case(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:60], y[:60]
    threat = ThreatModel("linf", 0.08)
    suite = create_all("fast", norm="linf")
    ev = evaluate(model, x, y, suite, threat, seed=0)
    alone = evaluate(model, x, y, suite[0], threat, seed=0)
    assert ev.records.success.sum() >= alone.records.success.sum()
    assert np.array_equal(ev.records.success, ev.records.attack_index >= 0)


def test_records_within_budget_matches_accuracy_at(digits_model) -> None:
    """A bounded view of an unbounded run: successes beyond ε become failures."""
    model, x, y = digits_model
    ev = evaluate(model, x[:40], y[:40], create("pgd", steps=10), ThreatModel("linf", 0.2))
    rec = ev.records
    for eps in (0.0, 0.05, 0.1, 0.2):
        bounded = rec.within("linf", eps)
        assert (bounded.linf[bounded.success] <= eps).all()
        acc = float((bounded.adv_pred == bounded.y).mean())
        assert acc == pytest.approx(accuracy_at(rec, "linf", eps))
    curve = minimal_norms(rec, "linf", [0.0, 0.1, 0.2])["curve"]
    assert [p["accuracy"] for p in curve] == sorted([p["accuracy"] for p in curve], reverse=True)


MINIMAL = [s.name for s in list_attacks() if s.minimal and "l2" in s.norms]


@pytest.mark.skipif(not MINIMAL, reason="no minimal-norm L2 attack registered")
def test_minimal_norm_run_gives_curve_and_budgets(digits_model, tmp_path) -> None:
    model, x, y = digits_model
    name = "fmn" if "fmn" in MINIMAL else MINIMAL[0]
    x, y = x[:40].numpy(), y[:40].numpy()
    run = run_attack(model, (x, y), attack=name, norm="l2", steps=30, out=tmp_path / "m")
    res = run.results
    assert res["config"]["minimal_norm"] and res["config"]["threat"]["eps"] == "inf"
    mn = res["minimal"]
    assert mn["found"] >= 0.95 * mn["attacked"] and mn["median"] > 0
    curve = [p["accuracy"] for p in mn["curve"]]
    assert curve == sorted(curve, reverse=True) and curve[-1] <= 0.05
    assert (tmp_path / "m" / "curve.png").stat().st_size > 1000
    # Budgets: one unbounded run; each budget's numbers follow from the minimal norms.
    swept = run_attack(model, (x, y), attack=name, norm="l2", eps=[0.5, 1.0], steps=30)
    accs = [p["metrics"]["adversarial_accuracy"] for p in swept.results["sweep"]]
    ref = [accuracy_at(run.evaluation.records, "l2", e) for e in (0.5, 1.0)]
    assert accs == pytest.approx(ref)
    head = swept.evaluation.records.within("l2", 1.0)
    assert swept.metrics["adversarial_accuracy"] == pytest.approx((head.adv_pred == y).mean())
    assert not math.isinf(swept.results["config"]["threat"]["eps"])


def test_standard_suite_on_digits_not_weaker_than_its_parts(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:24], y[:24]
    threat = ThreatModel("linf", 0.06)
    suite = evaluate(model, x, y, create_all("standard", norm="linf"), threat, seed=0)
    apgd = evaluate(model, x, y, create("apgd-ce"), threat, seed=0)
    assert suite.records.success.sum() >= apgd.records.success.sum()
    assert suite.config["attack"]["name"] == "apgd-ce+apgd-t+fab-t+square"


def test_minimal_suite_keeps_each_points_smallest(digits_model) -> None:
    """An ensemble of minimal-norm attacks runs every member on every point and keeps the
    smallest successful perturbation (not the first success)."""
    model, x, y = digits_model
    x, y = x[:30], y[:30]
    threat = ThreatModel("l2", math.inf)
    members = create_all("minimal", norm="l2", steps=20)
    suite = evaluate(model, x, y, members, threat, seed=0).records
    alone = [evaluate(model, x, y, m, threat, seed=0).records for m in members]
    assert suite.success.all()
    smallest = np.min([np.where(r.success, r.l2, np.inf) for r in alone], axis=0)
    assert np.allclose(suite.l2, smallest, rtol=1e-5)
    assert len(set(suite.attack_index.tolist())) > 1, "members should each win somewhere"
