"""Poisoning attacks, poison detectors, run_poisoning and ``aegis poison`` on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aegis.cli import EXIT_ERROR, EXIT_OK, app
from aegis.errors import ConfigError, DataError
from aegis.io.data import load_dataset
from aegis.metrics import backdoor_success_rate, flag_precision_recall
from aegis.model import Classifier
from aegis.poisoning import (
    ActivationClustering,
    BadNets,
    Blend,
    LabelConsistent,
    LabelFlip,
    SpectralSignatures,
    Trigger,
    create_attack,
)
from aegis.workflows.poison import run_poisoning
from aegis.zoo.train import train_classifier


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_dataset("digits", split="train").tensors()
    xt, yt = load_dataset("digits", split="test").tensors()
    assert y is not None and yt is not None
    return x, y, xt, yt


@pytest.fixture(scope="module")
def badnets_model(
    digits: tuple[torch.Tensor, ...],
) -> tuple[BadNets, object, Classifier]:
    """digits_cnn trained 8 epochs on digits with 5% BadNets (3×3 white square, target 0)."""
    x, y, _, _ = digits
    attack = BadNets(rate=0.05, target=0, trigger=Trigger(shape="square", size=3, pos="br"))
    poisoned = attack.poison(x, y, seed=0)
    model = train_classifier(poisoned.x, poisoned.y, arch="digits_cnn", epochs=8, lr=3e-3)
    return attack, poisoned, model


# -- attacks: exact rate, exact trigger, exact labels ------------------------------------------


def test_badnets_rate_trigger_and_labels(digits: tuple[torch.Tensor, ...]) -> None:
    x, y, _, _ = digits
    attack = BadNets(rate=0.1, target=3, trigger=Trigger.parse("square:size=2,pos=tl,offset=0"))
    p = attack.poison(x, y, seed=1)
    n = round(0.1 * len(x))
    assert p.n_poisoned == n and p.mask.dtype == torch.bool
    idx, rest = p.mask.nonzero().flatten(), (~p.mask).nonzero().flatten()
    assert (y[idx] != 3).all()  # drawn from other classes, so every poisoned label changes
    assert (p.y[idx] == 3).all() and torch.equal(p.y[rest], y[rest])
    assert (p.x[idx][:, :, :2, :2] == 1.0).all()  # the patch is exactly the trigger
    untouched = torch.ones(8, 8, dtype=torch.bool)
    untouched[:2, :2] = False
    assert torch.equal(p.x[idx][:, :, untouched], x[idx][:, :, untouched])
    assert torch.equal(p.x[rest], x[rest])
    assert not torch.equal(x, p.x)  # the input was copied, not mutated
    assert x.data_ptr() != p.x.data_ptr()


def test_checkerboard_and_pattern_triggers(tmp_path: Path) -> None:
    x = torch.full((4, 1, 8, 8), 0.5)
    board = Trigger(shape="checkerboard", size=3, pos="br", offset=1).apply(x)
    patch = board[0, 0, 4:7, 4:7]
    assert torch.equal(patch, torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]]))
    assert (board[0, 0, :4] == 0.5).all() and (board[0, 0, 7] == 0.5).all()
    pat = np.arange(6, dtype=np.float32).reshape(2, 3) / 10
    np.save(tmp_path / "p.npy", pat)
    stamped = Trigger.parse(f"pattern:file={tmp_path / 'p.npy'},pos=center").apply(x)
    assert torch.allclose(stamped[1, 0, 3:5, 2:5], torch.from_numpy(pat))
    assert Trigger.parse(str(tmp_path / "p.npy")).to_dict()["pattern_size"] == [2, 3]


def test_label_flip_a_to_b_and_random(digits: tuple[torch.Tensor, ...]) -> None:
    x, y, _, _ = digits
    p = LabelFlip(rate=0.05, source=1, target=7).poison(x, y, seed=0)
    idx = p.mask.nonzero().flatten()
    assert p.n_poisoned == round(0.05 * len(x))
    assert (y[idx] == 1).all() and (p.y[idx] == 7).all()
    assert torch.equal(p.y[~p.mask], y[~p.mask]) and torch.equal(p.x, x)
    r = LabelFlip(rate=0.2).poison(x, y, seed=0)
    assert r.n_poisoned == round(0.2 * len(x))
    assert (r.y[r.mask] != y[r.mask]).all() and torch.equal(r.y[~r.mask], y[~r.mask])
    assert len(torch.unique(r.y[r.mask])) == 10  # random flips reach every class


def test_blend_is_the_alpha_mix(digits: tuple[torch.Tensor, ...]) -> None:
    x, y, _, _ = digits
    attack = Blend(rate=0.1, target=2, pattern="checkerboard", alpha=0.25)
    p = attack.poison(x, y, seed=0)
    board = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 == 0).float()
    expected = 0.75 * x[p.mask] + 0.25 * board
    assert torch.allclose(p.x[p.mask], expected) and (p.y[p.mask] == 2).all()
    assert torch.equal(p.x[~p.mask], x[~p.mask])


def test_label_consistent_keeps_labels(digits: tuple[torch.Tensor, ...]) -> None:
    x, y, _, _ = digits
    clf = train_classifier(x, y, arch="tiny_mlp", epochs=2, lr=3e-3)
    attack = LabelConsistent(rate=0.05, target=4, trigger=Trigger(size=2), eps=0.2, steps=5)
    p = attack.poison(x, y, seed=0, model=clf)
    idx = p.mask.nonzero().flatten()
    assert p.n_poisoned == round(0.05 * len(x)) and torch.equal(p.y, y)
    assert (y[idx] == 4).all()
    assert (p.x[idx][:, :, 5:7, 5:7] == 1.0).all()  # trigger at br, offset 1
    inside = torch.ones(8, 8, dtype=torch.bool)
    inside[5:7, 5:7] = False
    delta = (p.x[idx] - x[idx])[:, :, inside]
    assert delta.abs().max() <= 0.2 + 1e-6 and delta.abs().max() > 0.05  # the PGD step moved
    assert torch.equal(p.x[~p.mask], x[~p.mask])
    with pytest.raises(ConfigError, match="surrogate model"):
        attack.poison(x, y, seed=0)
    with pytest.raises(DataError, match=r"only .* are eligible"):
        LabelConsistent(rate=0.5, target=4).poison(x, y, model=clf)


def test_same_seed_same_poison_other_seed_other(digits: tuple[torch.Tensor, ...]) -> None:
    x, y, _, _ = digits
    for attack in (
        BadNets(rate=0.1, target=0),
        Blend(rate=0.1, target=0, pattern="noise"),
        LabelFlip(rate=0.1),
    ):
        a, b = attack.poison(x, y, seed=5), attack.poison(x, y, seed=5)
        c = attack.poison(x, y, seed=6)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.mask, b.mask)
        assert not torch.equal(a.mask, c.mask)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: BadNets(rate=0.0), ConfigError, r"rate must be in \(0, 1\]"),
        (lambda: BadNets(rate=1.5), ConfigError, r"rate must be in \(0, 1\]"),
        (lambda: LabelFlip(rate=0.1, source=2), ConfigError, "needs a target"),
        (lambda: Trigger(size=0), ConfigError, "size must be >= 1"),
        (lambda: Trigger(pos="middle"), ConfigError, "pos must be one of"),
        (lambda: Trigger.parse("square:size=x"), ConfigError, "must be a number"),
        (lambda: Trigger.parse("star:size=3"), ConfigError, "shape must be one of"),
        (lambda: Blend(alpha=0.0), ConfigError, "alpha"),
        (lambda: create_attack("nope"), ConfigError, "unknown poisoning attack"),
    ],
)
def test_bad_parameters(make: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        make()  # type: ignore[operator]
    assert "\n" not in str(info.value)


def test_bad_inputs(digits: tuple[torch.Tensor, ...]) -> None:
    x, y, _, _ = digits
    cases: list[tuple[object, type[Exception], str]] = [
        (lambda: BadNets(target=10).poison(x, y), ConfigError, r"out of range.*use 0\.\.9"),
        (lambda: BadNets(trigger=Trigger(size=9)).poison(x, y), ConfigError, "does not fit"),
        (lambda: BadNets().poison(x[0], y), DataError, r"\(N, C, H, W\)"),
        (lambda: BadNets().poison(x, y[:10]), DataError, "labels must have shape"),
        (lambda: BadNets(rate=1e-5).poison(x, y), DataError, "poisons none"),
        (lambda: Blend(pattern=np.ones((4, 4))).poison(x, y), DataError, "pattern has shape"),
        (lambda: Trigger.parse("pattern:file=missing.npy"), DataError, "no pattern file"),
    ]
    for make, error, match in cases:
        with pytest.raises(error, match=match) as info:
            make()  # type: ignore[operator]
        assert "\n" not in str(info.value)


# -- metrics ---------------------------------------------------------------------------------


def test_backdoor_and_flag_metrics() -> None:
    r = backdoor_success_rate(np.array([0, 0, 1, 0]), np.array([0, 1, 2, 3]), 0)
    assert r["rate"] == pytest.approx(2 / 3) and r["excluded_target"] == 1
    m = flag_precision_recall(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool))
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    none = flag_precision_recall(np.zeros(3, bool), np.ones(3, bool))
    assert none["precision"] is None and none["recall"] == 0.0


# -- backdoor and detection on a tiny model --------------------------------------------------


def test_backdoor_beats_chance(
    badnets_model: tuple[BadNets, object, Classifier], digits: tuple[torch.Tensor, ...]
) -> None:
    attack, _, model = badnets_model
    _, _, xt, yt = digits
    pred = model.predict(attack.apply_trigger(xt)).numpy()
    success = backdoor_success_rate(pred, yt.numpy(), 0)["rate"]
    assert success is not None and success > 0.8  # chance is 0.1
    assert float((model.predict(xt) == yt).float().mean()) > 0.9  # and stays accurate


def test_detectors_find_an_obvious_poison(
    badnets_model: tuple[BadNets, object, Classifier],
) -> None:
    _, poisoned, model = badnets_model
    x, y, mask = poisoned.x, poisoned.y, poisoned.mask.numpy()  # type: ignore[attr-defined]
    share = int(mask.sum()) / int((y == 0).sum())  # the poisoned share of the target class
    spectral = SpectralSignatures(eps=share).detect(model, x, y)
    s = flag_precision_recall(spectral.flagged, mask)
    assert s["recall"] >= 0.7  # measured 0.75; it removes 1.5·eps of every class
    ac = ActivationClustering(analysis="size").detect(model, x, y)  # a third of class 0
    a = flag_precision_recall(ac.flagged, mask)
    assert a["recall"] >= 0.8 and a["precision"] >= 0.5
    again = ActivationClustering(analysis="size").detect(model, x, y)
    assert np.array_equal(ac.flagged, again.flagged)  # seeded


@pytest.fixture(scope="module")
def half_poisoned(digits: tuple[torch.Tensor, ...]) -> tuple[object, Classifier]:
    """digits_cnn trained 8 epochs on digits with 10% BadNets into class 0: the poison is
    about half of class 0, so the two clusters have similar sizes."""
    x, y, _, _ = digits
    attack = BadNets(rate=0.1, target=0, trigger=Trigger(shape="square", size=3, pos="br"))
    poisoned = attack.poison(x, y, seed=0)
    model = train_classifier(poisoned.x, poisoned.y, arch="digits_cnn", epochs=8, lr=3e-3)
    return poisoned, model


def test_detectors_find_poison_at_half_of_the_target_class(
    half_poisoned: tuple[object, Classifier],
) -> None:
    poisoned, model = half_poisoned
    x, y, mask = poisoned.x, poisoned.y, poisoned.mask.numpy()  # type: ignore[attr-defined]
    share = int(mask.sum()) / int((y == 0).sum())
    assert share > 0.45  # the case where "smaller cluster" and "highest scores" fail
    # the old detectors: size test flags no poison; fixed removal of 1.5·ε of every class
    old_ac = flag_precision_recall(
        ActivationClustering(analysis="size").detect(model, x, y).flagged, mask
    )
    assert old_ac["recall"] < 0.1
    old_sp = flag_precision_recall(SpectralSignatures(eps=share).detect(model, x, y).flagged, mask)
    assert old_sp["precision"] is not None and old_sp["precision"] < 0.2
    adaptive = SpectralSignatures(eps=share, mode="adaptive").detect(model, x, y)
    s = flag_precision_recall(adaptive.flagged, mask)
    assert s["recall"] >= 0.8 and s["precision"] >= 0.6  # measured 0.889 / 0.831
    ac = ActivationClustering(analysis="exclusion", epochs=8, lr=3e-3).detect(model, x, y)
    a = flag_precision_recall(ac.flagged, mask)
    assert a["recall"] >= 0.8 and a["precision"] >= 0.6  # measured 0.910 / 0.732
    c0 = next(c for c in ac.classes if c["class"] == 0)
    assert c0["flagged"] > 0 and c0["reclassified_as_own_label"] < 0.5


def test_detector_parameters_are_checked() -> None:
    for make, match in (
        (lambda: ActivationClustering(analysis="biggest"), "analysis must be one of"),
        (lambda: ActivationClustering(min_own=0.0), "min_own"),
        (lambda: SpectralSignatures(mode="auto"), "mode must be fixed or adaptive"),
        (lambda: SpectralSignatures(separation=0), "separation"),
    ):
        with pytest.raises(ConfigError, match=match):
            make()


def test_exclusion_needs_a_known_architecture(
    badnets_model: tuple[BadNets, object, Classifier],
) -> None:
    _, poisoned, model = badnets_model
    renamed = Classifier(model.module, model.info, name="custom")
    with pytest.raises(ConfigError, match="pass arch"):
        ActivationClustering().detect(renamed, poisoned.x, poisoned.y)  # type: ignore[attr-defined]


# -- run_poisoning and the CLI ---------------------------------------------------------------


def test_run_poisoning_reproducible() -> None:
    kw = dict(
        attack="badnets", rate=0.1, target=0, defenses=("spectral",), arch="tiny_mlp", epochs=2
    )
    a = run_poisoning("digits", train_limit=400, test_limit=100, seed=3, **kw)  # type: ignore[arg-type]
    b = run_poisoning("digits", train_limit=400, test_limit=100, seed=3, **kw)  # type: ignore[arg-type]
    assert a["poisoning"] == b["poisoning"]
    assert a["kind"] == "poisoning" and a["poisoning"]["n_poisoned"] == 40
    # adaptive spectral's default ε needs no knowledge of the attack; fixed mode's is labelled
    assert a["config"]["spectral_eps_source"].startswith("a defender's prior")
    c = run_poisoning(
        "digits",
        train_limit=400,
        test_limit=100,
        seed=3,
        spectral_mode="fixed",
        **kw,  # type: ignore[arg-type]
    )
    assert c["config"]["spectral_eps_source"].startswith("oracle")


def test_cli_poison_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["poison", "--dataset", "digits", "--attack", "badnets", "--rate", "0.1"]
    args += ["--target", "0", "--trigger", "square:size=3,pos=br", "--arch", "tiny_mlp"]
    args += ["--epochs", "2", "--train-limit", "500", "--test-limit", "100", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_OK, result.output
    assert "poisoned data" in result.output and "backdoor" in result.output
    data = json.loads((out / "results.json").read_text())
    assert data["schema"] == "aegis.results/1" and data["kind"] == "poisoning"
    p = data["poisoning"]
    assert set(p["models"]) == {"clean", "poisoned"}
    assert set(p["defenses"]) == {"activation-clustering", "spectral"}
    for model in [*p["models"].values(), *(d["cleaned"] for d in p["defenses"].values())]:
        assert {"clean_accuracy", "per_class", "backdoor"} <= set(model)
        assert len(model["per_class"]["f1"]) == 10
    for d in p["defenses"].values():
        assert {"precision", "recall", "flagged"} <= set(d["detection"])
    assert data["config"]["attack"]["trigger"]["size"] == 3 and p["n_poisoned"] == 50


def test_cli_poison_bad_input_is_one_line(tmp_path: Path) -> None:
    from aegis.cli import main

    for extra, match in (
        (["--rate", "2"], "rate must be in (0, 1]"),
        (["--target", "11"], "out of range"),
        (["--trigger", "square:size=12"], "does not fit"),
    ):
        args = ["poison", "--train-limit", "100", "--epochs", "1", "--out", str(tmp_path), *extra]
        result = CliRunner().invoke(app, args, standalone_mode=True)
        assert result.exit_code != EXIT_OK
        assert isinstance(result.exception, ConfigError | DataError)
        assert match in str(result.exception) and "\n" not in str(result.exception)
    assert EXIT_ERROR == 1 and callable(main)
