"""Training a model of an aegis architecture on in-memory data with the one loop: the victims
of poisoning, the substitutes of extraction and the shadow models of membership inference
(``aegis.zoo.train.train_classifier`` adds robust training chosen by defense name)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aegis.errors import ConfigError, DataError
from aegis.model import Classifier, ModelInfo
from aegis.training.loop import Crafting, soft_targets_of, train_loop, validate_params
from aegis.training.schedule import seeded
from aegis.zoo.architectures import ARCHITECTURES

FORMAT_VERSION = 1
"""Version of the recorded hyper-parameters (``params["format_version"]``)."""
SOURCE = "aegis.zoo.train.train_classifier"
"""The ``source`` of the Classifiers trained here, as recorded since before this module."""


@dataclass(frozen=True)
class RobustTraining:
    """Robust training for :func:`train_classifier`: the defense, its recorded name and
    crafting attack, the L∞ budget, the crafting steps per batch and the ε ramp share."""

    name: str
    strategy: Crafting
    crafting: str
    eps: float
    attack_steps: int
    eps_ramp: float


def train_classifier(
    x: Tensor,
    y: Tensor,
    *,
    arch: str = "mnist_cnn",
    num_classes: int | None = None,
    epochs: int = 5,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
    augment_shift: int = 0,
    weight_decay: float = 0.0,
    robust: RobustTraining | None = None,
    checkpoint: Path | None = None,
    progress: bool = False,
    soft_targets: Tensor | None = None,
) -> Classifier:
    """Train a model of an aegis architecture on in-memory data with the reference trainer's
    loop (Adam, one-cycle schedule, seeded shuffling and augmentation): the victims of
    poisoning, the substitutes of extraction and the shadow models of membership inference.

    Args:
        x: training inputs, (n, C, H, W) in [0, 1].
        y: integer labels, (n,).
        arch: a key of ``aegis.zoo.architectures.ARCHITECTURES`` (``mnist_cnn``,
            ``digits_cnn``, ``tiny_mlp``; ``tiny_mlp`` takes the input shape from ``x``).
        num_classes: number of classes (default: ``max(y) + 1``).
        epochs, lr, batch_size, seed, augment_shift: as in ``aegis.zoo.train_reference``.
        weight_decay: Adam's L2 penalty (a regularizer that reduces membership leakage).
        robust: robust training (a defense of :mod:`aegis.defenses.training`, its L∞ ``eps``,
            crafting steps and ε ramp); ``None`` for standard training.
        checkpoint: a file for per-epoch checkpoints (resumed when it holds the same run).
        progress: show a progress bar.
        soft_targets: (n, k) non-negative scores, e.g. a victim's probabilities (Knockoff
            Nets): train on the soft cross-entropy to them (rows are normalized to sum to 1)
            instead of the labels' cross-entropy; standard training only.

    Returns:
        A frozen Classifier in eval mode, in the input box [0, 1].
    """
    k = _check_data(x, y, arch, num_classes)
    shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    kwargs: dict[str, Any] = {"num_classes": k}
    if arch == "tiny_mlp":
        kwargs["input_shape"] = shape
    params = _params(int(x.shape[0]), arch, epochs, seed, batch_size, lr, augment_shift,
                     weight_decay, robust)  # fmt: skip
    soft = None if soft_targets is None else soft_targets_of(soft_targets, int(x.shape[0]), k)
    if soft is not None:
        if robust is not None:
            raise ConfigError("soft_targets apply to standard training; drop defense")
        # only runs with soft targets carry the key: the other runs' hashes stay as they were
        params["soft_targets"] = hashlib.sha256(soft.numpy().tobytes()).hexdigest()
    with seeded(seed):
        module = ARCHITECTURES[arch](**kwargs)
        info = ModelInfo(num_classes=k, input_shape=shape)
        strategy = None if robust is None else robust.strategy
        train_loop(module, info, x.float(), y.long(), params, strategy, checkpoint, resume=True,
                   progress=progress, soft=soft)  # fmt: skip
    return Classifier(module, info, name=arch, source=SOURCE)


def _check_data(x: Tensor, y: Tensor, arch: str, num_classes: int | None) -> int:
    """Check the training data and the architecture; the number of classes."""
    if x.ndim != 4 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise DataError(
            f"training data must be (n, C, H, W) inputs with (n,) labels, got {tuple(x.shape)} "
            f"and {tuple(y.shape)}"
        )
    if not torch.isfinite(x).all():
        raise DataError("training inputs contain NaN or infinite values; clean the data first")
    k = int(y.max()) + 1 if num_classes is None else num_classes
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise DataError(f"labels must lie in 0..{k - 1}, got {int(y.min())}..{int(y.max())}")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)}")
    return k


def _params(
    n: int,
    arch: str,
    epochs: int,
    seed: int,
    batch_size: int,
    lr: float,
    augment_shift: int,
    weight_decay: float,
    robust: RobustTraining | None,
) -> dict[str, Any]:
    """The recorded (and validated) hyper-parameters of an in-memory run; they key its
    checkpoint."""
    params: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "dataset": "in-memory",
        "n": n,
        "arch": arch,
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "optimizer": "adam",
        "schedule": "onecycle",
        "lr": lr,
        "augment_shift": augment_shift,
        "weight_decay": weight_decay,
        "adversarial": None if robust is None else robust.name,
    }
    if robust is not None:
        params.update(
            eps=robust.eps,
            norm="linf",
            attack=robust.crafting,
            attack_steps=robust.attack_steps,
            attack_step_size=None,
            eps_ramp=robust.eps_ramp,
            attack_early_stop=False,
        )
    params["eval_steps"] = 1  # unused: nothing is scored here; keeps validate_params' contract
    validate_params(params)
    return params
