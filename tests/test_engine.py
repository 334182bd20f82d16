"""The engine's records and the metrics computed from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

from aegis import metrics
from aegis.engine import evaluate
from aegis.errors import ConfigError, DataError
from aegis.records import Records
from aegis.registry import create
from aegis.threat import ThreatModel


def test_untargeted_records(tiny, data) -> None:
    x, y = data
    y = y.clone()
    y[:5] = (y[:5] + 1) % 3  # five points the model now gets "wrong"
    ev = evaluate(tiny, x, y, create("pgd", steps=20), ThreatModel("linf", 0.3), batch_size=16)
    r = ev.records
    assert len(r) == 60 and (r.index == np.arange(60)).all()
    correct = r.clean_pred == r.y
    assert (r.attacked == correct).all(), "only correctly classified points are attacked"
    assert (r.adv_pred[~r.attacked] == r.clean_pred[~r.attacked]).all()
    # success is decided by predicting again on the returned inputs
    again = tiny.predict(torch.from_numpy(ev.x_adv)).numpy()
    assert (again == r.adv_pred).all()
    assert (r.success == (r.attacked & (again != r.y))).all()
    assert (r.linf[r.attacked] <= 0.3 + 1e-6).all() and (r.l0[~r.attacked] == 0).all()
    assert (r.gradient_calls[r.attacked] >= 1).all() and (r.gradient_calls[~r.attacked] == 0).all()
    assert (r.gradient_calls <= 20).all()
    assert (r.forward_calls >= 1).all()
    sr = metrics.success_rate(r)
    assert sr["attacked"] == correct.sum() and sr["rate"] == r.success.sum() / correct.sum()


def test_targeted_excludes_target_class(tiny, data) -> None:
    x, y = data
    ev = evaluate(tiny, x, y, create("pgd", steps=40), ThreatModel("linf", 0.6), targets=2)
    r = ev.records
    assert (~r.eligible == (r.y == 2)).all()
    assert not r.attacked[r.y == 2].any()
    sr = metrics.success_rate(r)
    assert sr["excluded_target"] == int((y == 2).sum())
    assert sr["rate"] == pytest.approx(r.success.sum() / r.attacked.sum())
    assert sr["rate"] > 0.9
    assert (r.adv_pred[r.success] == 2).all()
    v = metrics.verdict(r, 0.9)
    assert v["reached"] is True and "reach their target class" in v["text"]


def test_per_input_targets_and_errors(tiny, data) -> None:
    x, y = data
    targets = ((y + 1) % 3).numpy()
    ev = evaluate(tiny, x, y, create("bim", steps=30), ThreatModel("linf", 0.6), targets=targets)
    assert (ev.records.target == targets).all() and ev.config["targets"] == "per-input"
    with pytest.raises(ConfigError, match=r"target class must be in \[0, 2\]"):
        evaluate(tiny, x, y, create("bim"), ThreatModel(), targets=3)
    with pytest.raises(DataError, match="one class or one per input"):
        evaluate(tiny, x, y, create("bim"), ThreatModel(), targets=np.zeros(3, int))
    with pytest.raises(DataError, match="labels must lie"):
        evaluate(tiny, x, y + 3, create("bim"), ThreatModel())
    with pytest.raises(DataError, match="one entry per input"):
        evaluate(tiny, x, y[:10], create("bim"), ThreatModel())


def test_same_seed_same_records(tiny, data) -> None:
    x, y = data
    a = evaluate(tiny, x, y, create("pgd", steps=5), ThreatModel("l2", 1.0), seed=3)
    b = evaluate(tiny, x, y, create("pgd", steps=5), ThreatModel("l2", 1.0), seed=3)
    assert np.array_equal(a.x_adv, b.x_adv)
    assert np.array_equal(a.records.adv_pred, b.records.adv_pred)


def test_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.7, y, rng.integers(0, 4, 200))
    ours = metrics.precision_recall_f1(y, pred, 4)
    p, r, f, _s = precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    np.testing.assert_allclose(ours["precision"], p)
    np.testing.assert_allclose(ours["recall"], r)
    np.testing.assert_allclose(ours["f1"], f)
    assert ours["macro_f1"] == pytest.approx(f.mean())


def test_records_roundtrip_and_empty(tiny, data) -> None:
    x, y = data
    ev = evaluate(tiny, x[:7], y[:7], create("fgsm"), ThreatModel("linf", 0.1))
    again = Records.from_dict(ev.records.to_dict())
    for name in ("y", "adv_pred", "success", "l2", "gradient_calls"):
        assert np.array_equal(getattr(again, name), getattr(ev.records, name))
    empty = Records.empty()
    assert metrics.summarize(empty, 3)["success"]["rate"] is None
    assert metrics.verdict(empty, 0.5)["reached"] is None


def test_verdict_never_says_robust(tiny, data) -> None:
    x, y = data
    ev = evaluate(tiny, x, y, create("fgsm"), ThreatModel("linf", 0.01))
    text = metrics.verdict(ev.records, 0.9)["text"]
    assert "FAILS" in text and "upper bound" in text and "robust " not in text.split(";")[0]


def test_call_counts_exact(tiny, data) -> None:
    x, y = data
    full = evaluate(tiny, x, y, create("pgd", steps=7, early_stop=False), ThreatModel("linf", 0.3))
    r = full.records
    assert (r.gradient_calls[r.attacked] == 7).all() and (r.gradient_calls[~r.attacked] == 0).all()
    # one clean prediction for everyone, one re-prediction for the attacked
    assert (r.forward_calls == 1 + r.attacked).all()
    early = evaluate(tiny, x, y, create("pgd", steps=20), ThreatModel("linf", 0.6)).records
    assert early.success.all() and (early.gradient_calls[early.attacked] < 20).all()


def test_ensemble_keeps_per_sample_worst_case(tiny, data) -> None:
    x, y = data
    threat = ThreatModel("linf", 0.3)  # fgsm fools about a third, pgd about two thirds
    weak = create("fgsm")
    strong = create("pgd", steps=30)
    alone = evaluate(tiny, x, y, weak, threat).records
    both = evaluate(tiny, x, y, [weak, strong], threat)
    r = both.records
    assert both.config["attack"]["name"] == "fgsm+pgd"
    # fgsm's successes are kept as they were; pgd ran only where fgsm failed
    assert (r.attack_index[alone.success] == 0).all()
    assert (r.success == (r.attack_index >= 0)).all()
    assert set(np.unique(r.attack_index[r.success])) <= {0, 1}
    assert r.success.sum() > alone.success.sum() > 0
    assert (r.gradient_calls[alone.success] == 1).all()
    by = metrics.success_rate(r)["by_attack"]
    assert sum(by) == r.success.sum() and by[0] == alone.success.sum()
    with pytest.raises(ConfigError, match="at least one attack"):
        evaluate(tiny, x, y, [], threat)


def test_ensemble_from_names() -> None:
    from aegis.registry import create_all

    members = create_all("pgd,apgd-ce", steps=5, restarts=2)
    assert [m.registry_name for m in members] == ["pgd", "apgd-ce"]
    assert all(m.steps == 5 and m.restarts == 2 for m in members)
    with pytest.raises(ConfigError, match="has parameter decay"):
        create_all("pgd,apgd-ce", decay=0.5)
