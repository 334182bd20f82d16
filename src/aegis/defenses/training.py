"""Robust training defenses: each is a small crafting strategy plus a loss, shared by one loop.

The loop (:func:`aegis.zoo.train.train_reference`) owns batching, seeding, the ε ramp, the
optimizer, checkpoints and the progress bar. A defense only answers two questions per batch:

- ``craft(model, x, y, threat, ...)``: which training inputs to use against the current weights
  (called with the model in eval mode and its parameters frozen, so only input gradients are
  computed);
- ``loss(module, x, x_adv, y)``: the training objective on them (called in train mode).

Registered defenses (``aegis train --defense NAME``):

=========  ====================================================================================
pgd-at     Madry et al. 2018 — CE on PGD examples (uniform random start, steps from the recipe)
trades     Zhang et al. 2019 — CE(f(x), y) + β·KL(f(x) ‖ f(x')), x' from PGD on the KL term
           started at x + 0.001·N(0, 1); β = 6
fast-at    Wong et al. 2020 — CE on FGSM from a uniform random start in [−ε, ε], step
           step_ratio·ε (1.25, the paper's; the MNIST recipe of aegis.zoo.train uses 1.0),
           projected: one input gradient per batch
mart       Wang et al. 2020 — BCE(f(x'), y) + λ·KL(f(x) ‖ f(x'))·(1 − p_y(x)) on PGD examples,
           with BCE = −log p_y(x') − log(1 − max_{k≠y} p_k(x')); λ = 6
=========  ====================================================================================

    >>> d = create_training_defense("trades", beta=3.0)
    >>> x_adv = d.craft(clf, x, y, ThreatModel("linf", 0.3), steps=10, step_size=None,
    ...                 early_stop=False, generator=g)
    >>> loss, logits = d.loss(module, x, x_adv, y)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aegis.attacks._params import resolve_step
from aegis.attacks.pgd import PGD
from aegis.errors import ConfigError
from aegis.model import Classifier
from aegis.registry import Registry
from aegis.threat import ThreatModel

TRADES_START_STD = 0.001
"""TRADES starts its KL attack at x + 0.001·N(0, 1): the KL term has zero gradient at x' = x."""


def kl_rows(log_p: Tensor, logits_q: Tensor) -> Tensor:
    """Per-sample KL(p ‖ q) with p given by its log-probabilities and q by logits (shape (n,))."""
    log_q = F.log_softmax(logits_q, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


@dataclass(frozen=True, kw_only=True)
class TrainingDefense(ABC):
    """Base of every robust-training strategy: frozen, keyword-only hyper-parameters."""

    registry_name: ClassVar[str] = ""
    crafting: ClassVar[str] = ""  # the attack that makes the training inputs, as recorded
    iterative: ClassVar[bool] = True  # takes ``steps`` / ``step_size`` from the recipe
    early_stop_ok: ClassVar[bool] = False  # whether its attack can freeze fooled points

    @abstractmethod
    def craft(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        *,
        steps: int,
        step_size: float | None,
        early_stop: bool,
        generator: torch.Generator,
    ) -> Tensor:
        """The training inputs for this batch (detached), inside the threat's ball ∩ box."""

    @abstractmethod
    def loss(self, module: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(scalar training loss, logits on ``x_adv`` for the running training accuracy)."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# -- registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSpec:
    """A registered defense: its class and what a user needs to know before choosing it."""

    name: str
    cls: type[TrainingDefense]
    paper: str
    summary: str
    needs: str  # what it costs / requires per batch
    suffix: str  # model file name: <dataset>_cnn_<suffix>.safetensors

    def parameters(self) -> list[str]:
        return [f.name for f in fields(self.cls)]


ALIASES = {"pgd": "pgd-at"}
"""Older names: ``adversarial="pgd"`` / ``--adversarial pgd`` mean ``pgd-at``."""
_TRAINING = Registry[TrainingSpec]("defense", aliases=ALIASES)

D = TypeVar("D", bound="type[TrainingDefense]")


def register_training(
    name: str, *, paper: str, needs: str, suffix: str | None = None
) -> Callable[[D], D]:
    """Class decorator: register a training defense under a lowercase kebab-case ``name``."""
    _TRAINING.check_name(name)

    def deco(cls: D) -> D:
        doc = (cls.__doc__ or "").strip().splitlines()
        summary = doc[0] if doc else ""
        _TRAINING.register(name, TrainingSpec(name, cls, paper, summary, needs, suffix or name))
        cls.registry_name = name
        return cls

    return deco


def list_training_defenses() -> list[TrainingSpec]:
    return _TRAINING.list()


def get_training_spec(name: str) -> TrainingSpec:
    """The spec registered as ``name`` (or an alias); unknown names get a "did you mean"."""
    return _TRAINING.get(name)


def create_training_defense(name: str, **params: Any) -> TrainingDefense:
    """Build the defense registered as ``name``; ``None`` values keep the defaults."""
    spec = get_training_spec(name)
    given = {k: v for k, v in params.items() if v is not None}
    built: TrainingDefense = _TRAINING.create(spec.name, **given)
    return built


def _check_weight(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value >= 0):  # also rejects NaN
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}")


# -- the defenses -------------------------------------------------------------------------------


def _pgd(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    steps: int,
    step_size: float | None,
    early_stop: bool,
    generator: torch.Generator,
) -> Tensor:
    size = resolve_step(step_size, threat.eps, steps)
    attack = PGD(steps=steps, step_size=size, early_stop=early_stop)
    return attack(model, x, y, threat, generator=generator).detach()


class _PGDCrafted(TrainingDefense):
    """Defenses trained on PGD examples crafted against the current weights."""

    crafting: ClassVar[str] = "pgd"
    early_stop_ok: ClassVar[bool] = True

    def craft(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        *,
        steps: int,
        step_size: float | None,
        early_stop: bool,
        generator: torch.Generator,
    ) -> Tensor:
        return _pgd(
            model,
            x,
            y,
            threat,
            steps=steps,
            step_size=step_size,
            early_stop=early_stop,
            generator=generator,
        )


@register_training(
    "pgd-at",
    paper="https://arxiv.org/abs/1706.06083",
    needs="input gradients; `steps` forward+backward per batch for the attack, one for the loss",
    suffix="pgd",
)
@dataclass(frozen=True, kw_only=True)
class PGDAT(_PGDCrafted):
    """PGD adversarial training (Madry et al. 2018): cross-entropy on PGD examples only."""

    def loss(self, module: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = module(x_adv)
        return F.cross_entropy(logits, y), logits


@register_training(
    "fast-at",
    paper="https://arxiv.org/abs/2001.03994",
    needs="input gradients; one forward+backward per batch for the attack, one for the loss",
)
@dataclass(frozen=True, kw_only=True)
class FastAT(TrainingDefense):
    """Fast adversarial training (Wong et al. 2020): FGSM from a uniform random start."""

    step_ratio: float = 1.25  # α = step_ratio · ε (the paper's 1.25)

    crafting: ClassVar[str] = "fgsm-rs"
    iterative: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (isinstance(self.step_ratio, (int, float)) and self.step_ratio > 0):
            raise ConfigError(f"step_ratio must be > 0, got {self.step_ratio!r}")

    def craft(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        *,
        steps: int,
        step_size: float | None,
        early_stop: bool,
        generator: torch.Generator,
    ) -> Tensor:
        # One PGD step from the uniform start is exactly FGSM-RS: δ ~ U[−ε, ε] (projected onto
        # the box), δ += α·sign(∇), then the projection onto the ε-ball ∩ box.
        attack = PGD(steps=1, step_size=self.step_ratio * threat.eps, early_stop=False)
        return attack(model, x, y, threat, generator=generator).detach()

    def loss(self, module: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = module(x_adv)
        return F.cross_entropy(logits, y), logits


@register_training(
    "trades",
    paper="https://arxiv.org/abs/1901.08573",
    needs="input gradients; `steps` forward+backward per batch for the KL attack, "
    "clean and adversarial forward passes for the loss",
)
@dataclass(frozen=True, kw_only=True)
class TRADES(TrainingDefense):
    """TRADES (Zhang et al. 2019): CE(f(x), y) + β·KL(f(x) ‖ f(x')), x' maximizing the KL."""

    beta: float = 6.0

    crafting: ClassVar[str] = "pgd-kl"

    def __post_init__(self) -> None:
        _check_weight("beta", self.beta)

    def craft(
        self,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        *,
        steps: int,
        step_size: float | None,
        early_stop: bool,
        generator: torch.Generator,
    ) -> Tensor:
        if threat.eps == 0:
            return x.detach().clone()
        bounds = model.bounds
        size = resolve_step(step_size, threat.eps, steps)
        log_p = F.log_softmax(model.logits(x), dim=1)  # the clean distribution, held fixed
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x_adv = threat.project(x + TRADES_START_STD * noise, x, bounds)

        def kl(logits: Tensor) -> Tensor:
            return kl_rows(log_p, logits)

        for _ in range(steps):
            _, _, grad = model.value_and_grad(x_adv, kl)
            x_adv = threat.project(x_adv + size * threat.ascent_direction(grad), x, bounds)
        return x_adv.detach()

    def loss(self, module: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = module(x)
        logits_adv = module(x_adv)
        robust = kl_rows(F.log_softmax(logits, dim=1), logits_adv).mean()
        return F.cross_entropy(logits, y) + self.beta * robust, logits_adv


@register_training(
    "mart",
    paper="https://openreview.net/forum?id=rklOg6EFwS",
    needs="input gradients; `steps` forward+backward per batch for the attack, "
    "clean and adversarial forward passes for the loss",
)
@dataclass(frozen=True, kw_only=True)
class MART(_PGDCrafted):
    """MART (Wang et al. 2020): boosted CE on PGD examples + λ·KL weighted by 1 − p_y(x)."""

    lam: float = 6.0

    def __post_init__(self) -> None:
        _check_weight("lam", self.lam)

    def loss(self, module: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = module(x)
        logits_adv = module(x_adv)
        p_adv = F.softmax(logits_adv, dim=1)
        # The most likely wrong class on x' (the paper's max_{k≠y} p_k(x')).
        runner_up = logits_adv.detach().scatter(1, y[:, None], float("-inf")).argmax(1)
        p_wrong = p_adv.gather(1, runner_up[:, None]).squeeze(1)
        bce = F.cross_entropy(logits_adv, y, reduction="none") - torch.log(1.0001 - p_wrong)
        log_p = F.log_softmax(logits, dim=1)
        p_true = log_p.gather(1, y[:, None]).squeeze(1).exp()
        robust = kl_rows(log_p, logits_adv) * (1.0 - p_true)
        return bce.mean() + self.lam * robust.mean(), logits_adv


__all__ = [
    "ALIASES",
    "MART",
    "PGDAT",
    "TRADES",
    "FastAT",
    "TrainingDefense",
    "TrainingSpec",
    "create_training_defense",
    "get_training_spec",
    "kl_rows",
    "list_training_defenses",
    "register_training",
]
