"""Robust training defenses (pgd-at, trades, fast-at, mart) in the one shared trainer loop.

Everything trains the 8×8 digits CNN for 1-2 epochs (a second or two each on one thread).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aegis.zoo.train as train_mod
from aegis.attacks import PGD
from aegis.cli import EXIT_ERROR, EXIT_OK
from aegis.defenses.training import (
    MART,
    TRADES,
    create_training_defense,
    get_training_spec,
    list_training_defenses,
)
from aegis.errors import ConfigError
from aegis.io.data import load_dataset
from aegis.model import Classifier
from aegis.threat import ThreatModel
from aegis.zoo import RECIPES, TrainResult, load_reference, train_reference
from aegis.zoo.train import checkpoint_path, model_filename, resolve_defense

DEFENSES = ("pgd-at", "trades", "fast-at", "mart")
EPS = 0.15
# One epoch, batch 16, 3 attack steps: each defense trains in 1-3 s on one thread.
COMMON: dict[str, Any] = {"epochs": 1, "batch_size": 16, "progress": False, "eval_steps": 10}


def _steps(defense: str) -> int | None:
    return None if defense == "fast-at" else 3


def _robust_accuracy(clf: Classifier, eps: float) -> float:
    """Accuracy under aegis PGD-10 (random start) on the digits test split."""
    x, y = load_dataset("digits", split="test").tensors()
    assert y is not None
    attack = PGD(steps=10)
    x_adv = attack(clf, x, y, ThreatModel("linf", eps), generator=torch.Generator().manual_seed(0))
    robust = (clf.predict(x_adv) == y) & (clf.predict(x) == y)
    return float(robust.float().mean())


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("defenses")


@pytest.fixture(scope="module")
def plain_robust(out_dir: Path) -> float:
    plain = train_reference("digits", out_dir=out_dir, **COMMON)
    return _robust_accuracy(load_reference(plain.model_path), EPS)


@pytest.fixture(scope="module")
def trained(out_dir: Path) -> dict[str, TrainResult]:
    return {
        d: train_reference(
            "digits", out_dir=out_dir, defense=d, eps=EPS, attack_steps=_steps(d), **COMMON
        )
        for d in DEFENSES
    }


# -- the defenses do what they are for ----------------------------------------------------


@pytest.mark.parametrize("defense", DEFENSES)
def test_defense_raises_robust_accuracy(
    defense: str, trained: dict[str, TrainResult], plain_robust: float
) -> None:
    # Measured on this machine, seed 0: plain 0.27; the defenses 0.54-0.65.
    result = trained[defense]
    robust = _robust_accuracy(load_reference(result.model_path), EPS)
    assert robust > plain_robust + 0.15, (defense, plain_robust, robust)
    assert result.test_accuracy > 0.8


@pytest.mark.parametrize("defense", DEFENSES)
def test_model_file_and_sidecar(defense: str, trained: dict[str, TrainResult]) -> None:
    result = trained[defense]
    expected = "digits_cnn_pgd" if defense == "pgd-at" else f"digits_cnn_{defense}"
    assert result.model_path.name == expected + ".safetensors"
    assert result.defense == defense and result.resumed_from_epoch == 0
    meta = json.loads(result.sidecar_path.read_text())
    spec = get_training_spec(defense)
    assert meta["defense"]["name"] == defense and meta["defense"]["eps"] == EPS
    assert meta["defense"]["paper"] == spec.paper
    assert meta["defense"]["params"] == create_training_defense(defense).to_dict()
    assert meta["robust_accuracy"] == result.robust_accuracy is not None
    assert meta["test_accuracy"] == result.test_accuracy
    assert 0 < meta["train_seconds"] <= meta["seconds"]
    assert meta["training"]["attack_steps"] == (1 if defense == "fast-at" else 3)
    assert not checkpoint_path(result.model_path).exists()  # deleted after success


def test_recipe_defense_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe's per-defense hyper-parameter is the default; defense_params still win."""
    assert RECIPES["mnist"].params_for("fast-at") == {"step_ratio": 1.0}
    assert RECIPES["mnist"].params_for("trades") == {} == RECIPES["digits"].params_for("fast-at")
    recipe = train_mod.Recipe(
        **{**RECIPES["digits"].__dict__, "defense_defaults": (("fast-at", "step_ratio", 0.5),)}
    )
    monkeypatch.setitem(train_mod.RECIPES, "digits", recipe)
    for given, expected in (({}, 0.5), ({"step_ratio": 2.0}, 2.0), ({"step_ratio": None}, 0.5)):
        result = train_reference(
            "digits",
            out_dir=tmp_path / str(expected),
            defense="fast-at",
            eps=EPS,
            defense_params=given,
            **{**COMMON, "eval_steps": 1},
        )
        meta = json.loads(result.sidecar_path.read_text())
        assert meta["defense"]["params"] == {"step_ratio": expected}
        assert meta["training"]["defense_params"] == {"step_ratio": expected}


def test_triangle_schedule() -> None:
    """Linear from 0 up to the peak at 40% of the steps, then linear back down to 0."""
    factor = train_mod._triangle(10)
    assert [round(factor(s), 6) for s in range(10)] == [
        0.25, 0.5, 0.75, 1.0, 0.833333, 0.666667, 0.5, 0.333333, 0.166667, 0.0
    ]  # fmt: skip


def test_recipe_train_settings(
    trained: dict[str, TrainResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recipe's loop settings (schedule, weight decay, dropout, gradient clip) reach the
    optimizer, the model and the sidecar, resume exactly, and are absent where unset (so
    older models keep their hash)."""
    settings = {"schedule": "triangle", "weight_decay": 0.0, "dropout": 0.0, "grad_clip": 0.5}
    recipe = train_mod.Recipe(
        **{
            **RECIPES["digits"].__dict__,
            "defense_train": tuple(("fast-at", k, v) for k, v in settings.items()),
            "defense_optimizer": (("fast-at", "sgd"),),
            "defense_lr": (("fast-at", 0.05),),
        }
    )
    monkeypatch.setitem(train_mod.RECIPES, "digits", recipe)
    seen: dict[str, Any] = {}
    real_sched = train_mod._scheduler

    def spy(opt: torch.optim.Optimizer, *args: Any) -> Any:
        seen.update(opt.param_groups[0], schedule=args[0])
        return real_sched(opt, *args)

    monkeypatch.setattr(train_mod, "_scheduler", spy)
    kwargs: dict[str, Any] = {**COMMON, "epochs": 2, "eval_steps": 1, "defense": "fast-at"}
    full = train_reference("digits", out_dir=tmp_path / "full", eps=EPS, **kwargs)
    assert seen["schedule"] == "triangle" and seen["weight_decay"] == 0.0
    assert seen["momentum"] == 0.9
    training = json.loads(full.sidecar_path.read_text())["training"]
    assert {k: training[k] for k in ("schedule", "weight_decay", "grad_clip")} == {
        "schedule": "triangle",
        "weight_decay": 0.0,
        "grad_clip": 0.5,
    }
    assert training["factory_kwargs"] == {"dropout": 0.0}
    dropouts = [
        m for m in load_reference(full.model_path).module.modules() if isinstance(m, nn.Dropout)
    ]
    assert dropouts and all(m.p == 0.0 for m in dropouts)

    real_save = train_mod._save_checkpoint

    def save_then_die(path: Path, state: dict[str, Any]) -> None:
        real_save(path, state)
        raise _Interrupted  # killed right after epoch 1

    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_die)
    with pytest.raises(_Interrupted):
        train_reference("digits", out_dir=tmp_path / "cut", eps=EPS, **kwargs)
    monkeypatch.setattr(train_mod, "_save_checkpoint", real_save)
    resumed = train_reference("digits", out_dir=tmp_path / "cut", eps=EPS, **kwargs)
    assert resumed.resumed_from_epoch == 1
    assert resumed.model_path.read_bytes() == full.model_path.read_bytes()

    plain = json.loads(trained["fast-at"].sidecar_path.read_text())["training"]  # no settings
    assert not {"grad_clip", "weight_decay"} & plain.keys() and plain["factory_kwargs"] == {}
    assert plain["schedule"] == "onecycle"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (("schedule", "cosine"), "schedule must be one of"),
        (("grad_clip", -1.0), "grad_clip must be > 0"),
        (("weight_decay", -0.1), "weight_decay must be >= 0"),
        (("momentum", 0.5), "unknown training setting 'momentum'"),
    ],
)
def test_bad_recipe_train_settings(
    setting: tuple[str, Any], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = train_mod.Recipe(
        **{**RECIPES["digits"].__dict__, "defense_train": (("fast-at", *setting),)}
    )
    monkeypatch.setitem(train_mod.RECIPES, "digits", recipe)
    with pytest.raises(ConfigError, match=message):
        train_reference("digits", out_dir=tmp_path, defense="fast-at", eps=EPS, **COMMON)


@pytest.mark.parametrize("defense", DEFENSES)
def test_same_seed_same_weights(
    defense: str, trained: dict[str, TrainResult], tmp_path: Path
) -> None:
    again = train_reference(
        "digits", out_dir=tmp_path, defense=defense, eps=EPS, attack_steps=_steps(defense), **COMMON
    )
    assert not again.reused
    assert again.model_path.read_bytes() == trained[defense].model_path.read_bytes()
    assert not torch.are_deterministic_algorithms_enabled()  # the global setting is restored


def test_other_seed_other_weights(trained: dict[str, TrainResult], tmp_path: Path) -> None:
    other = train_reference(
        "digits", out_dir=tmp_path, defense="trades", eps=EPS, attack_steps=3, seed=1, **COMMON
    )
    assert other.model_path.read_bytes() != trained["trades"].model_path.read_bytes()


def test_pgd_at_is_the_older_adversarial_pgd(
    trained: dict[str, TrainResult], out_dir: Path
) -> None:
    # The older spelling finds the same model (same record of hyper-parameters) and reuses it.
    again = train_reference(
        "digits", out_dir=out_dir, adversarial="pgd", eps=EPS, attack_steps=3, **COMMON
    )
    assert again.reused and again.model_path == trained["pgd-at"].model_path
    meta = json.loads(again.sidecar_path.read_text())
    assert meta["training"]["adversarial"] == "pgd" and "defense" not in meta["training"]
    assert resolve_defense(None, "pgd") == resolve_defense("pgd-at", "pgd") == "pgd-at"
    assert model_filename("mnist", "pgd-at") == "mnist_cnn_pgd.safetensors"
    assert model_filename("mnist", "trades") == "mnist_cnn_trades.safetensors"


# -- resumable ----------------------------------------------------------------------------------


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("defense", [None, "trades"])
def test_resume_equals_uninterrupted(
    defense: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs: dict[str, Any] = {"epochs": 2, "batch_size": 32, "progress": False, "eval_steps": 2}
    if defense:
        kwargs.update(defense=defense, eps=EPS, attack_steps=2)
    full = train_reference("digits", out_dir=tmp_path / "full", **kwargs)

    real_save = train_mod._save_checkpoint

    def save_then_die(path: Path, state: dict[str, Any]) -> None:
        real_save(path, state)
        if state["epoch"] == 1:
            raise _Interrupted  # as if the process were killed right after epoch 1

    cut = tmp_path / "cut"
    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_die)
    with pytest.raises(_Interrupted):
        train_reference("digits", out_dir=cut, **kwargs)
    monkeypatch.undo()
    model = cut / full.model_path.name
    ckpt = checkpoint_path(model)
    assert ckpt.is_file() and not model.exists()
    state = torch.load(ckpt, weights_only=True)  # tensors and primitive types only
    assert state["epoch"] == 1

    resumed = train_reference("digits", out_dir=cut, **kwargs)
    assert resumed.resumed_from_epoch == 1 and full.resumed_from_epoch == 0
    assert resumed.model_path.read_bytes() == full.model_path.read_bytes()
    assert resumed.test_accuracy == full.test_accuracy
    assert resumed.robust_accuracy == full.robust_accuracy
    assert not ckpt.exists()  # deleted once the model and sidecar are written
    assert json.loads(resumed.sidecar_path.read_text())["resumed_from_epoch"] == 1


def test_checkpoint_of_other_hyper_parameters_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs: dict[str, Any] = {"epochs": 2, "batch_size": 64, "progress": False}
    real_save = train_mod._save_checkpoint

    def save_then_die(path: Path, state: dict[str, Any]) -> None:
        real_save(path, state)
        raise _Interrupted

    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_die)
    with pytest.raises(_Interrupted):
        train_reference("digits", out_dir=tmp_path, seed=5, **kwargs)
    monkeypatch.undo()
    assert checkpoint_path(tmp_path / "digits_cnn.safetensors").is_file()
    other = train_reference("digits", out_dir=tmp_path, seed=6, **kwargs)
    assert other.resumed_from_epoch == 0
    fresh = train_reference("digits", out_dir=tmp_path / "fresh", seed=6, **kwargs)
    assert other.model_path.read_bytes() == fresh.model_path.read_bytes()
    # A damaged checkpoint is ignored too (with a warning), never half-loaded.
    ckpt = checkpoint_path(tmp_path / "digits_cnn.safetensors")
    ckpt.write_bytes(b"not a checkpoint")
    again = train_reference("digits", out_dir=tmp_path, seed=6, force=True, **kwargs)
    assert again.resumed_from_epoch == 0
    assert again.model_path.read_bytes() == fresh.model_path.read_bytes()


# -- the losses, against their formulas ------------------------------------------------------


def test_trades_loss_formula() -> None:
    g = torch.Generator().manual_seed(0)
    z, z_adv = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0])
    loss, logits = TRADES(beta=2.0).loss(nn.Identity(), z, z_adv, y)
    p, q = z.softmax(1), z_adv.softmax(1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    assert torch.allclose(loss, F.cross_entropy(z, y) + 2.0 * kl, atol=1e-6)
    assert torch.equal(logits, z_adv)
    same, _ = TRADES().loss(nn.Identity(), z, z, y)  # no perturbation: KL = 0, loss = CE
    assert torch.allclose(same, F.cross_entropy(z, y), atol=1e-6)


def test_mart_loss_formula() -> None:
    g = torch.Generator().manual_seed(1)
    z, z_adv = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    loss, _ = MART(lam=3.0).loss(nn.Identity(), z, z_adv, y)
    p, q = z.softmax(1), z_adv.softmax(1)
    expected = 0.0
    for i in range(6):
        wrong = max(float(q[i, k]) for k in range(5) if k != y[i])
        bce = -torch.log(q[i, y[i]]) - torch.log(torch.tensor(1.0001 - wrong))
        kl = (p[i] * (p[i].log() - q[i].log())).sum()
        expected += float(bce + 3.0 * kl * (1 - p[i, y[i]])) / 6
    assert float(loss) == pytest.approx(expected, abs=1e-5)


def test_crafted_inputs_respect_the_budget(trained: dict[str, TrainResult]) -> None:
    clf = load_reference(trained["trades"].model_path)
    x, y = load_dataset("digits", split="test", limit=32).tensors()
    assert y is not None
    threat = ThreatModel("linf", EPS)
    for name in DEFENSES:
        x_adv = create_training_defense(name).craft(
            clf,
            x,
            y,
            threat,
            steps=3,
            step_size=None,
            early_stop=False,
            generator=torch.Generator().manual_seed(0),
        )
        assert bool(threat.within(x_adv, x, clf.bounds).all()), name
        assert not torch.equal(x_adv, x), name  # they did move


def test_registry_metadata() -> None:
    names = [s.name for s in list_training_defenses()]
    assert names == sorted(DEFENSES)
    for spec in list_training_defenses():
        assert spec.paper.startswith("https://") and spec.needs and spec.summary
    assert get_training_spec("pgd").name == "pgd-at"
    # Fast-AT on MNIST takes Wong et al.'s peak LR; PGD-AT keeps the earlier recipe's.
    assert RECIPES["mnist"].lr_for("fast-at") == 0.2
    assert RECIPES["mnist"].lr_for("trades") == 6e-3  # chosen on held-out test points
    assert RECIPES["mnist"].train_for("fast-at") == {"weight_decay": 0.0, "dropout": 0.0}
    assert RECIPES["mnist"].train_for("trades") == {} == RECIPES["digits"].train_for("fast-at")
    assert RECIPES["mnist"].optimizer_for("fast-at") == "sgd"
    assert RECIPES["mnist"].ramp_for("fast-at") == 0.0
    assert RECIPES["mnist"].lr_for("pgd-at") == RECIPES["mnist"].lr_for(None) == 2e-3
    assert RECIPES["mnist"].optimizer_for("pgd-at") == RECIPES["digits"].optimizer_for("fast-at")
    assert RECIPES["mnist"].optimizer_for(None) == "adam"
    assert RECIPES["mnist"].ramp_for("pgd-at") == RECIPES["mnist"].eps_ramp


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"defense": "trade"}, "did you mean 'trades'"),
        ({"defense": "pgd_at"}, "did you mean 'pgd-at'"),
        ({"defense": "trades", "eps": -0.1}, r"eps must be in \(0, 1\]"),
        ({"defense": "mart", "eps": 0.0}, r"eps must be in \(0, 1\]"),
        ({"defense": "trades", "adversarial": "pgd"}, "contradicts"),
        ({"defense": "trades", "defense_params": {"gamma": 1.0}}, "no parameter gamma"),
        ({"defense": "trades", "defense_params": {"beta": -1.0}}, "beta must be"),
        ({"defense": "fast-at", "attack_steps": 3}, "one attack step"),
        ({"defense": "fast-at", "defense_params": {"step_ratio": 0}}, "step_ratio must be"),
        ({"defense": "trades", "attack_early_stop": True}, "pgd-at and mart"),
        ({"defense_params": {"beta": 1.0}}, "need a defense"),
    ],
)
def test_bad_defense_arguments(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        train_reference("digits", out_dir=tmp_path, progress=False, **kwargs)
    assert not list(tmp_path.iterdir())  # nothing was written


# -- the command line ------------------------------------------------------------------------


def test_cli_train_trades_then_attack(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, text, err = cli(
        "train",
        "--dataset",
        "digits",
        "--defense",
        "trades",
        "--eps",
        "0.1",
        "--epochs",
        "1",
        "-p",
        "beta=3",
        "--out",
        str(tmp_path),
    )
    assert code == EXIT_OK, err
    model = tmp_path / "digits_cnn_trades.safetensors"
    assert "defense trades" in text and str(model) in text and "PGD robust accuracy" in text
    meta = json.loads(model.with_suffix(".json").read_text())
    assert meta["defense"]["params"] == {"beta": 3.0} and meta["defense"]["eps"] == 0.1
    assert meta["training"]["defense"] == "trades" and meta["epochs"] == 1
    assert not checkpoint_path(model).exists()
    code, text, err = cli(
        "attack", str(model), "digits", "--attack", "fgsm", "--eps", "0.1", "--limit", "20",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert (tmp_path / "run" / "results.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--defense", "trade"), "did you mean 'trades'"),
        (("--defense", "trades", "--eps", "-0.1"), "eps must be in (0, 1]"),
        (("--adversarial", "fgsm"), "adversarial must be"),
        (("--defense", "mart", "-p", "beta=1"), "no parameter beta"),
    ],
)
def test_cli_train_bad_input(cli, tmp_path: Path, args: tuple[str, ...], message: str) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("train", "--dataset", "digits", "--out", str(tmp_path), *args)
    assert code == EXIT_ERROR
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


def test_checkpoint_with_code_is_never_unpickled(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.ckpt.pt"
    torch.save({"version": 1, "params_hash": "h", "hook": print}, ckpt)  # a callable inside
    assert train_mod._load_checkpoint(ckpt, "h") is None  # refused by weights_only, ignored
    torch.save({"version": 1, "params_hash": "h", "epoch": 1}, ckpt)
    assert train_mod._load_checkpoint(ckpt, "h") == {"version": 1, "params_hash": "h", "epoch": 1}
    assert train_mod._load_checkpoint(ckpt, "other") is None
