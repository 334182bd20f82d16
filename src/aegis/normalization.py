"""Named input normalizations, and the check that tells when a model was probably trained with
one the run does not apply.

A model trained behind ``Normalize(mean, std)`` and run without it loses little clean accuracy
but can look far more robust than it is (PITFALLS.md: 28.5% → 76.0% under PGD). Users pass the
statistics by name (``--mean cifar10 --std cifar10``) or as numbers; when neither is given and
the data has labels, :func:`check_normalization` scores the clean data with each common preset
and says when one fits clearly better, with the accuracies it measured.

    >>> preset("cifar10", "mean")
    (0.4914, 0.4822, 0.4465)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from aegis.errors import ConfigError
from aegis.model import Classifier

PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "half": ((0.5,), (0.5,)),
}
"""Name → (mean, std) per channel, on [0, 1] pixels (torchvision's and RobustBench's values;
``half`` is ``Normalize(0.5, 0.5)``, mapping [0, 1] to [-1, 1])."""

MARGIN = 0.05
"""How much better (clean accuracy) a preset must fit before it is suggested; it must also at
least halve the errors, so a poor model's chance differences are not taken for a fit."""


def preset(name: str, which: str) -> tuple[float, ...]:
    """The ``which`` (``mean`` or ``std``) of the preset ``name``."""
    key = name.strip().lower()
    if key not in PRESETS:
        raise ConfigError(
            f"--{which} {name!r} is neither numbers nor a preset; use comma-separated numbers "
            f"or one of {', '.join(PRESETS)}"
        )
    return PRESETS[key][0 if which == "mean" else 1]


def parse(text: str | None, which: str) -> tuple[float, ...] | None:
    """``--mean`` / ``--std``: a preset name or comma-separated numbers."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        return preset(text, which)


def with_normalization(
    model: Classifier, mean: Sequence[float], std: Sequence[float]
) -> Classifier:
    """The same module behind another normalization (for scoring a candidate)."""
    info = dataclasses.replace(model.info, mean=tuple(mean), std=tuple(std))
    return model.derive(model.module, model.query_fn, info=info, freeze=True)


@dataclasses.dataclass(frozen=True)
class NormalizationCheck:
    """Clean accuracy as given and with each preset, the best, and the hint (if one fits
    clearly better)."""

    accuracy: dict[str, float]
    best: str
    n: int
    hint: str | None


def check_normalization(model: Classifier, x: Tensor, y: Tensor) -> NormalizationCheck | None:
    """Clean accuracy on ``(x, y)`` as given and with each preset that fits the channels; a
    record with a ``hint`` when one fits clearly better. None where it does not apply: the run
    already normalizes, or the model is not on [0, 1] pixels."""
    if model.info.mean is not None or model.info.std is not None or model.units is not None:
        return None
    if model.bounds != (0.0, 1.0) or not len(y):
        return None
    channels = model.input_shape[0]
    scores = {"as given": _accuracy(model, x, y)}
    for name, (mean, std) in PRESETS.items():
        if len(mean) in (1, channels):
            scores[name] = _accuracy(with_normalization(model, mean, std), x, y)
    best = max(scores, key=lambda k: scores[k])
    hint = None
    given = scores["as given"]
    if (
        best != "as given"
        and scores[best] >= given + MARGIN
        and 1 - scores[best] <= (1 - given) / 2
    ):
        flags = f"--mean {best} --std {best}"
        hint = (
            f"clean accuracy is {scores['as given']:.1%} as given but {scores[best]:.1%} with "
            f"{flags}: the model was probably trained with that normalization; pass {flags}, "
            "or the attack numbers are measured on inputs it never saw"
        )
    return NormalizationCheck(scores, best, len(y), hint)


def _accuracy(model: Classifier, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        pred = model.predict(x)
    return float((pred.cpu() == y.cpu()).float().mean())
