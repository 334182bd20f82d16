"""Poisoning attacks on a training set: each returns the poisoned (x, y) and the ground truth.

An attack's hyper-parameters are a frozen, keyword-only dataclass; ``attack.poison(x, y,
seed=...)`` returns a :class:`PoisonedSet` — poisoned inputs, labels and the boolean mask of the
poisoned indices — and never mutates its inputs. Exactly ``round(rate · n)`` points are
poisoned, chosen with a generator seeded by ``seed`` (same seed → same set). A backdoor attack's
``apply_trigger(x)`` stamps its trigger on test inputs, which is how its success rate is
measured (``metrics.backdoor_success_rate``).

- ``LabelFlip``: random flips (each chosen point gets another label, uniformly), or class
  ``source`` → ``target`` (the points are drawn from class ``source``).
- ``BadNets`` (Gu et al. 2017, https://arxiv.org/abs/1708.06733): a patch trigger stamped on
  points of other classes, relabeled to ``target``.
- ``Blend`` (Chen et al. 2017, https://arxiv.org/abs/1712.05526): x ← (1 − α)·x + α·pattern
  over the whole image, relabeled to ``target``.
- ``LabelConsistent`` (Turner et al. 2019, https://arxiv.org/abs/1912.02771): labels untouched;
  images of the ``target`` class are pushed away from their class by an L∞ PGD perturbation on a
  surrogate model (so the model must rely on the trigger to classify them), then stamped.

    >>> attack = BadNets(rate=0.1, target=0, trigger=Trigger.parse("square:size=3,pos=br"))
    >>> poisoned = attack.poison(x, y, seed=0)
    >>> poisoned.x.shape == x.shape, int(poisoned.mask.sum()) == round(0.1 * len(x))
    (True, True)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from aegis.errors import ConfigError, DataError
from aegis.model import Classifier
from aegis.registry import Registry

__all__ = [
    "ATTACKS",
    "BadNets",
    "Blend",
    "LabelConsistent",
    "LabelFlip",
    "PoisonedSet",
    "PoisoningAttack",
    "Trigger",
    "load_pattern",
]

POSITIONS = ("br", "bl", "tr", "tl", "center")
SHAPES = ("square", "checkerboard", "pattern")


@dataclass(frozen=True)
class PoisonedSet:
    """A poisoned training set: inputs, labels and the ground-truth mask of poisoned points."""

    x: Tensor
    y: Tensor
    mask: Tensor

    @property
    def n_poisoned(self) -> int:
        return int(self.mask.sum())

    @property
    def rate(self) -> float:
        return self.n_poisoned / max(1, int(self.mask.numel()))


def load_pattern(path: str | Path) -> np.ndarray:
    """A pattern image from a ``.npy`` file: (h, w) or (C, h, w), values in [0, 1]."""
    p = Path(path).expanduser()
    if p.suffix != ".npy" or not p.is_file():
        raise DataError(f"no pattern file {p}; give an existing .npy array of shape (h, w)")
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read pattern {p} ({exc}); save it with numpy.save") from exc
    return _check_pattern(arr, str(p))


def _check_pattern(arr: Any, what: str) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim not in (2, 3) or a.size == 0:
        raise DataError(f"pattern {what} must have shape (h, w) or (C, h, w), got {a.shape}")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise DataError(f"pattern {what} must hold finite values in [0, 1]; rescale it")
    return a if a.ndim == 3 else a[None]


@dataclass(frozen=True, kw_only=True)
class Trigger:
    """A patch trigger: its shape, size, position and pixel values.

    Args:
        shape: ``square`` (every pixel = ``value``), ``checkerboard`` (``value`` and 0
            alternating, ``value`` in the top-left pixel) or ``pattern`` (the ``pattern`` image).
        size: side of the square or checkerboard, in pixels (a pattern has its own size).
        pos: ``br``, ``bl``, ``tr``, ``tl`` (a corner, ``offset`` pixels from both edges) or
            ``center``.
        offset: distance from the image edges for a corner position.
        value: pixel value of the square (and of the bright checkerboard cells).
        pattern: (h, w) or (C, h, w) values in [0, 1], for ``shape="pattern"``.
    """

    shape: str = "square"
    size: int = 3
    pos: str = "br"
    offset: int = 1
    value: float = 1.0
    pattern: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ConfigError(
                f"trigger shape must be one of {', '.join(SHAPES)}, got {self.shape!r}"
            )
        if self.pos not in POSITIONS:
            raise ConfigError(
                f"trigger pos must be one of {', '.join(POSITIONS)}, got {self.pos!r}"
            )
        if self.size < 1:
            raise ConfigError(f"trigger size must be >= 1, got {self.size}")
        if self.offset < 0:
            raise ConfigError(f"trigger offset must be >= 0, got {self.offset}")
        if not 0 <= self.value <= 1:
            raise ConfigError(f"trigger value must be in [0, 1], got {self.value}")
        if self.shape == "pattern":
            if self.pattern is None:
                raise ConfigError("a pattern trigger needs a pattern image: pattern:file=p.npy")
            object.__setattr__(self, "pattern", _check_pattern(self.pattern, "of the trigger"))
        elif self.pattern is not None:
            raise ConfigError(f"a {self.shape} trigger takes no pattern; use shape='pattern'")

    @classmethod
    def parse(cls, text: str) -> Trigger:
        """``square:size=3,pos=br``, ``checkerboard:size=4,pos=tl,value=1``,
        ``pattern:file=p.npy,pos=center`` or a bare ``p.npy``."""
        text = text.strip()
        if text.endswith(".npy") and ":" not in text:
            return cls(shape="pattern", pattern=load_pattern(text))
        shape, _, rest = text.partition(":")
        options: dict[str, Any] = {}
        for item in filter(None, (v.strip() for v in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise ConfigError(f"trigger option {item!r} must be key=value, e.g. size=3")
            key = key.strip()
            try:
                if key in ("size", "offset"):
                    options[key] = int(value)
                elif key == "value":
                    options[key] = float(value)
                elif key == "pos":
                    options[key] = value.strip()
                elif key == "file":
                    options["pattern"] = load_pattern(value.strip())
                else:
                    raise ConfigError(
                        f"unknown trigger option {key!r}; use size, pos, offset, value or file"
                    )
            except (ConfigError, DataError):
                raise
            except ValueError as exc:
                raise ConfigError(f"trigger option {key} must be a number, got {value!r}") from exc
        return cls(shape=shape.strip(), **options)

    def patch(self, channels: int) -> Tensor:
        """The trigger's pixels, (C, h, w)."""
        if self.shape == "pattern":
            p = torch.from_numpy(self._pattern())
            if p.shape[0] not in (1, channels):
                raise DataError(
                    f"trigger pattern has {p.shape[0]} channels, the images {channels}; "
                    "give a (h, w) or matching (C, h, w) pattern"
                )
            return p.expand(channels, -1, -1).clone()
        s = self.size
        if self.shape == "square":
            return torch.full((channels, s, s), float(self.value))
        grid = (torch.arange(s)[:, None] + torch.arange(s)[None]) % 2 == 0
        return (grid.float() * float(self.value)).expand(channels, s, s).clone()

    def region(self, image_shape: tuple[int, int, int]) -> tuple[slice, slice]:
        """Rows and columns the trigger covers on an image of shape (C, H, W)."""
        _, hh, ww = image_shape
        ph, pw = self.patch(1).shape[1:] if self.shape != "pattern" else self._pattern_hw()
        if ph > hh or pw > ww:
            raise ConfigError(
                f"the {ph}×{pw} trigger does not fit a {hh}×{ww} image; use a smaller size"
            )
        o = self.offset
        if self.pos == "center":
            r, c = (hh - ph) // 2, (ww - pw) // 2
        else:
            r = o if self.pos[0] == "t" else hh - ph - o
            c = o if self.pos[1] == "l" else ww - pw - o
            if r < 0 or c < 0:
                raise ConfigError(
                    f"the {ph}×{pw} trigger at offset {o} does not fit a {hh}×{ww} image; "
                    "use a smaller size or offset"
                )
        return slice(r, r + ph), slice(c, c + pw)

    def _pattern(self) -> np.ndarray:
        if self.pattern is None:  # excluded by __post_init__
            raise ConfigError("a pattern trigger needs a pattern image: pattern:file=p.npy")
        return self.pattern

    def _pattern_hw(self) -> tuple[int, int]:
        p = self._pattern()
        return int(p.shape[1]), int(p.shape[2])

    def apply(self, x: Tensor) -> Tensor:
        """A copy of ``x`` (N, C, H, W) with the trigger stamped on every image."""
        _check_images(x)
        rows, cols = self.region((int(x.shape[1]), int(x.shape[2]), int(x.shape[3])))
        out = x.clone()
        out[:, :, rows, cols] = self.patch(int(x.shape[1])).to(out)
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"shape": self.shape, "pos": self.pos, "offset": self.offset}
        if self.shape == "pattern":
            h, w = self._pattern_hw()
            out["pattern_size"] = [h, w]
        else:
            out.update(size=self.size, value=self.value)
        return out


def _check_images(x: Tensor) -> None:
    if x.ndim != 4:
        raise DataError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")


def _check_set(x: Tensor, y: Tensor) -> None:
    _check_images(x)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(
            f"labels must have shape ({x.shape[0]},) to match the images, got {tuple(y.shape)}"
        )
    if x.shape[0] == 0:
        raise DataError("the training set is empty; give at least one image")
    if not torch.isfinite(x).all():
        raise DataError("training images contain NaN or inf; clean the data first")


def _num_classes(y: Tensor, num_classes: int | None) -> int:
    k = int(y.max()) + 1 if num_classes is None else num_classes
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise DataError(f"labels must lie in 0..{k - 1}, got {int(y.min())}..{int(y.max())}")
    return k


def _check_class(value: int, k: int, what: str) -> None:
    if not 0 <= value < k:
        raise ConfigError(f"{what} {value} is out of range for {k} classes; use 0..{k - 1}")


def _choose(pool: Tensor, k: int, generator: torch.Generator, what: str) -> Tensor:
    """``k`` distinct indices from ``pool``, uniformly, sorted."""
    if k > pool.numel():
        raise DataError(
            f"{what}: {k} points requested but only {pool.numel()} are eligible; lower the rate"
        )
    pick = torch.randperm(pool.numel(), generator=generator)[:k]
    return pool[pick].sort().values


@dataclass(frozen=True, kw_only=True)
class PoisoningAttack(ABC):
    """Hyper-parameters of a poisoning attack.

    Args:
        rate: share of the training set to poison, in (0, 1]; exactly ``round(rate · n)``
            points are poisoned.
    """

    name: ClassVar[str] = ""
    backdoor: ClassVar[bool] = False

    rate: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.rate <= 1:
            raise ConfigError(f"rate must be in (0, 1], got {self.rate}")

    def count(self, n: int) -> int:
        """Points poisoned in a set of ``n``: ``round(rate · n)``."""
        k = round(self.rate * n)
        if k < 1:
            raise DataError(f"rate {self.rate} of {n} points poisons none; raise the rate")
        return k

    def poison(
        self,
        x: Tensor,
        y: Tensor,
        *,
        seed: int = 0,
        num_classes: int | None = None,
        model: Classifier | None = None,
    ) -> PoisonedSet:
        """Poison ``(x, y)``: (N, C, H, W) inputs and (N,) labels. ``model`` is the surrogate of
        attacks that need one (label-consistent); the others ignore it."""
        _check_set(x, y)
        k = _num_classes(y, num_classes)
        generator = torch.Generator().manual_seed(seed)
        x_out, y_out = x.detach().clone(), y.detach().clone().long()
        mask = torch.zeros(x.shape[0], dtype=torch.bool)
        idx = self._poison(x_out, y_out, k, generator, model, seed)
        mask[idx] = True
        return PoisonedSet(x_out, y_out, mask)

    @abstractmethod
    def _poison(
        self,
        x: Tensor,
        y: Tensor,
        num_classes: int,
        generator: torch.Generator,
        model: Classifier | None,
        seed: int,
    ) -> Tensor:
        """Poison ``x`` and ``y`` (copies) in place; return the poisoned indices."""

    def apply_trigger(self, x: Tensor) -> Tensor:
        """``x`` with the backdoor trigger (backdoor attacks only)."""
        raise ConfigError(f"{self.name} plants no trigger; it has no backdoor to test")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rate": self.rate}


@dataclass(frozen=True, kw_only=True)
class LabelFlip(PoisoningAttack):
    """Label flipping: ``round(rate · n)`` points get a wrong label, inputs untouched.

    Args:
        source: flip only points of this class (``None``: any point, each to a uniformly drawn
            other class).
        target: the new label of the flipped points (``None`` with ``source=None``: random; a
            ``source`` needs a ``target``).
    """

    name: ClassVar[str] = "label-flip"

    source: int | None = None
    target: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source is not None and self.target is None:
            raise ConfigError("a label flip from a source class needs a target class")
        if self.source is not None and self.source == self.target:
            raise ConfigError(f"source and target are both {self.source}; flip to another class")

    def _poison(
        self,
        x: Tensor,
        y: Tensor,
        num_classes: int,
        generator: torch.Generator,
        model: Classifier | None,
        seed: int,
    ) -> Tensor:
        if num_classes < 2:
            raise DataError("label flipping needs at least 2 classes")
        for value, what in ((self.source, "source"), (self.target, "target")):
            if value is not None:
                _check_class(value, num_classes, what)
        n = self.count(x.shape[0])
        if self.source is not None and self.target is not None:
            pool = torch.nonzero(y == self.source).flatten()
            idx = _choose(pool, n, generator, f"flipping class {self.source}")
            y[idx] = self.target
            return idx
        pool = (
            torch.arange(y.shape[0])
            if self.target is None
            else torch.nonzero(y != self.target).flatten()
        )
        idx = _choose(pool, n, generator, "label flipping")
        if self.target is not None:
            y[idx] = self.target
        else:  # a uniform draw among the other classes
            shift = torch.randint(1, num_classes, (idx.numel(),), generator=generator)
            y[idx] = (y[idx] + shift) % num_classes
        return idx

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "source": self.source, "target": self.target}


@dataclass(frozen=True, kw_only=True)
class _Relabeling(PoisoningAttack):
    """A backdoor that stamps points of other classes and relabels them to ``target``."""

    backdoor: ClassVar[bool] = True
    target: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target < 0:
            raise ConfigError(f"target must be >= 0, got {self.target}")

    def _poison(
        self,
        x: Tensor,
        y: Tensor,
        num_classes: int,
        generator: torch.Generator,
        model: Classifier | None,
        seed: int,
    ) -> Tensor:
        _check_class(self.target, num_classes, "target")
        self.apply_trigger(x[:1])  # refuse a trigger that does not fit before choosing
        pool = torch.nonzero(y != self.target).flatten()
        idx = _choose(pool, self.count(x.shape[0]), generator, f"{self.name} poisoning")
        x[idx] = self.apply_trigger(x[idx])
        y[idx] = self.target
        return idx


@dataclass(frozen=True, kw_only=True)
class BadNets(_Relabeling):
    """BadNets (Gu et al. 2017): ``round(rate · n)`` points of classes other than ``target``,
    drawn uniformly, get the patch ``trigger`` and the label ``target``."""

    name: ClassVar[str] = "badnets"
    trigger: Trigger = field(default_factory=Trigger)

    def apply_trigger(self, x: Tensor) -> Tensor:
        return self.trigger.apply(x)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "target": self.target, "trigger": self.trigger.to_dict()}


def builtin_pattern(name: str, shape: tuple[int, int, int]) -> Tensor:
    """A full-image blend pattern: ``checkerboard`` (1-pixel cells) or ``noise`` (uniform,
    from a fixed seed so every run blends the same noise)."""
    c, h, w = shape
    if name == "checkerboard":
        grid = ((torch.arange(h)[:, None] + torch.arange(w)[None]) % 2 == 0).float()
        return grid.expand(c, h, w).clone()
    if name == "noise":
        return torch.rand((c, h, w), generator=torch.Generator().manual_seed(0))
    raise ConfigError(f"unknown blend pattern {name!r}; use checkerboard, noise or a .npy file")


@dataclass(frozen=True, kw_only=True)
class Blend(_Relabeling):
    """Blended trigger (Chen et al. 2017): x ← (1 − alpha)·x + alpha·pattern on ``round(rate ·
    n)`` points of other classes, relabeled to ``target``.

    Args:
        pattern: ``checkerboard``, ``noise`` or an image of the input's (H, W) or (C, H, W)
            shape with values in [0, 1] (e.g. from :func:`load_pattern`).
        alpha: blend weight in (0, 1].
    """

    name: ClassVar[str] = "blend"
    pattern: str | np.ndarray = field(default="checkerboard", compare=False)
    alpha: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha}")
        if isinstance(self.pattern, str):
            if self.pattern.endswith(".npy"):
                object.__setattr__(self, "pattern", load_pattern(self.pattern))
            else:
                builtin_pattern(self.pattern, (1, 2, 2))  # refuse an unknown name now
        else:
            object.__setattr__(self, "pattern", _check_pattern(self.pattern, "of the blend"))

    def image(self, shape: tuple[int, int, int]) -> Tensor:
        """The pattern for images of shape (C, H, W)."""
        if isinstance(self.pattern, str):
            return builtin_pattern(self.pattern, shape)
        p = torch.from_numpy(self.pattern)
        c, h, w = shape
        if tuple(p.shape[1:]) != (h, w) or p.shape[0] not in (1, c):
            raise DataError(
                f"blend pattern has shape {tuple(p.shape)}, the images {shape}; give a pattern "
                "of the images' size"
            )
        return p.expand(c, h, w).clone()

    def apply_trigger(self, x: Tensor) -> Tensor:
        _check_images(x)
        p = self.image((int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))).to(x)
        return ((1 - self.alpha) * x + self.alpha * p[None]).clamp(0, 1)

    def to_dict(self) -> dict[str, Any]:
        pattern = self.pattern if isinstance(self.pattern, str) else list(self.pattern.shape)
        return {**super().to_dict(), "target": self.target, "pattern": pattern, "alpha": self.alpha}


@dataclass(frozen=True, kw_only=True)
class LabelConsistent(PoisoningAttack):
    """Label-consistent (clean-label) backdoor (Turner et al. 2019): no label changes.

    ``rate`` is a share of the *whole* training set, but the ``round(rate · n)`` poisoned points
    are drawn from the ``target`` class only (a DataError if it has fewer). Each is moved by an
    untargeted L∞ PGD (``eps``, ``steps``, step 2.5·eps/steps) away from its true class on the
    surrogate ``model`` passed to ``poison`` (Turner et al. use an adversarially trained one;
    ``run_poisoning`` passes the model trained on clean data), then stamped with ``trigger``.
    Hard to learn from their content, these images teach the victim to rely on the trigger.
    """

    name: ClassVar[str] = "label-consistent"
    backdoor: ClassVar[bool] = True

    target: int = 0
    trigger: Trigger = field(default_factory=Trigger)
    eps: float = 0.3
    steps: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target < 0:
            raise ConfigError(f"target must be >= 0, got {self.target}")
        if not 0 <= self.eps <= 1:
            raise ConfigError(f"eps must be in [0, 1], got {self.eps}")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")

    def _poison(
        self,
        x: Tensor,
        y: Tensor,
        num_classes: int,
        generator: torch.Generator,
        model: Classifier | None,
        seed: int,
    ) -> Tensor:
        from aegis.attacks.pgd import PGD
        from aegis.threat import ThreatModel

        _check_class(self.target, num_classes, "target")
        self.apply_trigger(x[:1])
        if model is None and self.eps > 0:
            raise ConfigError(
                "label-consistent poisoning needs a surrogate model for its PGD step; pass "
                "model=... (or eps=0 for the trigger alone)"
            )
        pool = torch.nonzero(y == self.target).flatten()
        idx = _choose(pool, self.count(x.shape[0]), generator, "label-consistent poisoning")
        xs = x[idx]
        if model is not None and self.eps > 0:
            pgd = PGD(steps=self.steps, early_stop=False)  # push past the boundary
            gen = torch.Generator().manual_seed(seed + 1)
            parts = [
                pgd(
                    model,
                    xs[i : i + model.batch_size],
                    y[idx][i : i + model.batch_size],
                    ThreatModel("linf", self.eps),
                    generator=gen,
                ).cpu()
                for i in range(0, xs.shape[0], model.batch_size)
            ]
            xs = torch.cat(parts)
        x[idx] = self.apply_trigger(xs)
        return idx

    def apply_trigger(self, x: Tensor) -> Tensor:
        return self.trigger.apply(x)

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "target": self.target,
            "trigger": self.trigger.to_dict(),
            "eps": self.eps,
            "steps": self.steps,
            "rate_of": "whole set, drawn from the target class",
        }


ATTACKS = Registry[type[PoisoningAttack]]("poisoning attack")
"""Registry name → attack class; the names are the vocabulary of ``aegis poison --attack``."""
ATTACKS.register("label-flip", LabelFlip)
ATTACKS.register("badnets", BadNets)
ATTACKS.register("blend", Blend)
ATTACKS.register("label-consistent", LabelConsistent)
