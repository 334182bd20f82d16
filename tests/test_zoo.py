"""The zoo: reference architectures and the seeded trainer (digits, a few seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aegis.attacks import PGD
from aegis.errors import ConfigError, ModelError
from aegis.io.data import load_dataset
from aegis.model import Classifier
from aegis.threat import ThreatModel
from aegis.zoo import (
    ARCHITECTURES,
    DATASET_ARCH,
    TrainResult,
    create,
    digits_cnn,
    load_reference,
    mnist_cnn,
    tiny_mlp,
    train_reference,
)

FAST = {"epochs": 2, "batch_size": 32, "progress": False}


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="module")
def trained(zoo_dir: Path) -> TrainResult:
    return train_reference("digits", out_dir=zoo_dir, **FAST)  # type: ignore[arg-type]


def _robust_accuracy(clf: Classifier, eps: float) -> float:
    x, y = load_dataset("digits", split="test").tensors()
    assert y is not None
    attack = PGD(steps=10)
    x_adv = attack(clf, x, y, ThreatModel("linf", eps), generator=torch.Generator().manual_seed(0))
    robust = (clf.predict(x_adv) == y) & (clf.predict(x) == y)
    return float(robust.float().mean())


# -- architectures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("net", "shape"),
    [
        (mnist_cnn(), (3, 1, 28, 28)),
        (digits_cnn(), (3, 1, 8, 8)),
        (tiny_mlp((3, 5, 7), 4), (3, 3, 5, 7)),
        (create("tiny_mlp", input_shape=[1, 8, 8], num_classes=3, hidden=8), (3, 1, 8, 8)),
    ],
)
def test_architectures_return_logits(net: torch.nn.Module, shape: tuple[int, ...]) -> None:
    net.eval()
    out = net(torch.rand(shape))
    assert out.ndim == 2 and out.shape[0] == shape[0]


def test_registry_and_bad_arguments() -> None:
    assert set(DATASET_ARCH.values()) <= set(ARCHITECTURES)
    with pytest.raises(ConfigError, match="unknown architecture"):
        create("resnet9000")
    with pytest.raises(ConfigError, match="bad arguments"):
        create("mnist_cnn", width=3)
    with pytest.raises(ConfigError, match="num_classes"):
        tiny_mlp((1, 8, 8), 1)
    with pytest.raises(ConfigError, match="input_shape"):
        tiny_mlp((8, 8), 10)  # type: ignore[arg-type]


# -- training -------------------------------------------------------------------------------


def test_train_digits_writes_model_and_sidecar(trained: TrainResult) -> None:
    assert trained.model_path.name == "digits_cnn.safetensors"
    assert trained.model_path.is_file() and trained.sidecar_path.is_file()
    assert trained.test_accuracy > 0.6  # chance is 0.1
    assert trained.robust_accuracy is None and trained.epochs == 2 and not trained.reused
    meta = json.loads(trained.sidecar_path.read_text())
    for key in (
        "factory",
        "factory_kwargs",
        "num_classes",
        "input_shape",
        "bounds",
        "dataset",
        "split",
        "seed",
        "epochs",
        "test_accuracy",
        "training",
        "seconds",
        "sha256",
    ):
        assert key in meta, key
    assert meta["factory"] == "aegis.zoo.architectures:digits_cnn"
    assert meta["input_shape"] == [1, 8, 8] and meta["num_classes"] == 10
    assert meta["dataset"] == "digits" and meta["split"] == "train"
    assert meta["training"]["batch_size"] == 32 and meta["training"]["lr"] > 0
    assert not list(trained.model_path.parent.glob("*.tmp"))
    json.dumps(trained.to_dict())


def test_load_reference_matches_reported_accuracy(trained: TrainResult) -> None:
    clf = load_reference(trained.model_path)
    x, y = load_dataset("digits", split="test").tensors()
    acc = float((clf.predict(x) == y).float().mean())
    assert acc == pytest.approx(trained.test_accuracy)
    assert clf.input_shape == (1, 8, 8) and clf.provenance["num_classes"] == "sidecar"


def test_reuse_without_retraining(trained: TrainResult, zoo_dir: Path) -> None:
    stamp = trained.model_path.stat().st_mtime_ns
    again = train_reference("digits", out_dir=zoo_dir, **FAST)  # type: ignore[arg-type]
    assert again.reused and again.test_accuracy == trained.test_accuracy
    assert trained.model_path.stat().st_mtime_ns == stamp


def test_changed_hyper_parameters_or_force_retrain(tmp_path: Path) -> None:
    first = train_reference("digits", out_dir=tmp_path, epochs=1, progress=False)
    other = train_reference("digits", out_dir=tmp_path, epochs=1, seed=1, progress=False)
    assert not other.reused
    forced = train_reference(
        "digits", out_dir=tmp_path, epochs=1, seed=1, progress=False, force=True
    )
    assert not forced.reused and forced.test_accuracy == other.test_accuracy
    assert first.model_path == other.model_path


def test_same_seed_identical_weights(trained: TrainResult, tmp_path: Path) -> None:
    again = train_reference("digits", out_dir=tmp_path, **FAST)  # type: ignore[arg-type]
    assert not again.reused
    assert again.model_path.read_bytes() == trained.model_path.read_bytes()
    assert not torch.are_deterministic_algorithms_enabled()  # the global setting is restored


def test_corrupt_sidecar_or_weights(trained: TrainResult, tmp_path: Path) -> None:
    model = tmp_path / "digits_cnn.safetensors"
    model.write_bytes(trained.model_path.read_bytes()[:100])
    (tmp_path / "digits_cnn.json").write_text(trained.sidecar_path.read_text())
    with pytest.raises(ModelError, match="retrain"):
        load_reference(model)
    # A damaged file is not reused: the hash no longer matches.
    result = train_reference("digits", out_dir=tmp_path, epochs=1, progress=False)
    assert not result.reused
    with pytest.raises(ModelError, match="no model file"):
        load_reference(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"batch_size": 0}, "batch_size"),
        ({"adversarial": "fgsm"}, "adversarial must be"),
        ({"adversarial": "pgd", "eps": 0.0}, "eps must be in"),
        ({"adversarial": "pgd", "attack_steps": 0}, "attack_steps"),
    ],
)
def test_bad_training_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        train_reference("digits", out_dir=tmp_path, progress=False, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no reference model"):
        train_reference("cifar10", out_dir=tmp_path)


def test_pgd_training_raises_robust_accuracy(tmp_path: Path) -> None:
    # 1 epoch, batch 16, 3 PGD steps: the gap is 0.24-0.36 over seeds 0-2 (plain ≈ 0.2-0.3).
    eps = 0.15
    common = {"epochs": 1, "batch_size": 16, "progress": False, "out_dir": tmp_path}
    plain = train_reference("digits", **common)  # type: ignore[arg-type]
    adv = train_reference(
        "digits", adversarial="pgd", eps=eps, attack_steps=3, eval_steps=10, **common
    )  # type: ignore[arg-type]
    assert adv.model_path.name == "digits_cnn_pgd.safetensors"
    assert adv.robust_accuracy is not None
    meta = json.loads(adv.sidecar_path.read_text())
    assert meta["robust_accuracy"] == adv.robust_accuracy and meta["training"]["eps"] == eps
    plain_robust = _robust_accuracy(load_reference(plain.model_path), eps)
    adv_robust = _robust_accuracy(load_reference(adv.model_path), eps)
    assert adv_robust > plain_robust + 0.1, (plain_robust, adv_robust)


def test_train_classifier_learns_in_memory_data_reproducibly() -> None:
    from aegis.io.data import load_dataset
    from aegis.zoo.train import train_classifier

    x, y = load_dataset("digits", split="train").subset(400).tensors()
    assert y is not None
    a = train_classifier(x, y, arch="tiny_mlp", epochs=20, lr=1e-2, seed=1)
    b = train_classifier(x, y, arch="tiny_mlp", epochs=20, lr=1e-2, seed=1)
    xt, yt = load_dataset("digits", split="test").subset(200).tensors()
    assert float((a.predict(xt) == yt).float().mean()) > 0.8
    for (ka, va), (kb, vb) in zip(
        a.module.state_dict().items(), b.module.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)


def test_train_classifier_refuses_bad_labels_in_one_line() -> None:
    from aegis.errors import DataError
    from aegis.zoo.train import train_classifier

    x = torch.rand(8, 1, 8, 8)
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.2"):
        train_classifier(x, torch.tensor([0, 1, 2, 3, 0, 1, 2, 0]), num_classes=3, arch="tiny_mlp")
    with pytest.raises(DataError, match="NaN"):
        train_classifier(x * float("nan"), torch.zeros(8, dtype=torch.long), arch="tiny_mlp")


def test_train_reference_takes_sgd_and_refuses_other_optimizers(tmp_path: Path) -> None:
    r = train_reference(
        "digits", out_dir=tmp_path, epochs=2, optimizer="sgd", lr=0.05, progress=False
    )
    side = json.loads(r.sidecar_path.read_text())
    assert side["training"]["optimizer"] == "sgd" and r.test_accuracy > 0.5
    with pytest.raises(ConfigError, match="optimizer must be adam or sgd"):
        train_reference("digits", out_dir=tmp_path, optimizer="rmsprop", progress=False)
