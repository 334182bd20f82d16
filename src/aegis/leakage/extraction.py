"""Model extraction: train a substitute from a victim's answers to a query budget.

The attacker holds a pool of unlabeled inputs (held-out data of the victim's task, or data of
another distribution, e.g. the 8×8 digits upsampled to 28×28 against an MNIST victim) and may
ask the victim about at most ``budget`` of them. Its only access is a :class:`QueryOracle`,
which counts every input it answers, refuses to go past the budget, and returns only what the
victim's output policy lets through:

- ``labels`` (top-1 only): **Copycat** (Correia-Silva et al. 2018,
  https://arxiv.org/abs/1806.05476) trains the substitute on the victim's labels;
- ``scores`` (softmax probabilities), or ``round:N`` (probabilities rounded to N decimals, an
  output-side defense): **Knockoff Nets** (Orekondy et al. 2019,
  https://arxiv.org/abs/1812.02766) trains it on the soft cross-entropy to the scores.

Queries are drawn uniformly at random from the pool (Knockoff's "random" strategy); the paper's
adaptive strategy (a gradient bandit over the pool's classes) is not implemented. The queried
inputs of a smaller budget are a prefix of those of a larger one (same seed), so a budget list
gives a curve over nested query sets.

What is measured: the substitute's accuracy on the victim's test data, its fidelity (agreement
with the victim's predictions there), the queries used, and the practical threat — adversarial
examples crafted with a white-box attack on the substitute (PGD L∞ by default) and sent to the
victim: the share of the points the victim classifies correctly that it then gets wrong.

    >>> sub, info = extract(victim, pool, budget=1000, output=OutputPolicy.parse("labels"))

The workflow over a grid of budgets and output policies, the Python call behind
``aegis extract``, is :func:`aegis.workflows.extract.run_extraction`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from aegis.errors import ConfigError, DataError
from aegis.model import Classifier

log = logging.getLogger(__name__)

OUTPUT_KINDS = ("labels", "scores")
CHUNK = 256  # inputs per victim call


class BudgetExceeded(ConfigError):
    """The attacker asked for more queries than its budget allows."""


@dataclass(frozen=True)
class OutputPolicy:
    """What the victim returns to a query: ``labels`` (top-1 only), ``scores`` (softmax
    probabilities), or scores rounded to ``decimals`` places (``round:N``)."""

    kind: str
    decimals: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS:
            raise ConfigError(
                f"output must be labels, scores or round:N, got {self.kind!r}; e.g. "
                "--outputs labels,scores,round:2"
            )
        if self.decimals is not None and (self.kind != "scores" or not 0 <= self.decimals <= 8):
            raise ConfigError(
                f"rounding takes 0..8 decimals of scores, got {self.decimals}; e.g. round:2"
            )

    @classmethod
    def parse(cls, text: str) -> OutputPolicy:
        """``labels``, ``scores`` or ``round:N``."""
        t = text.strip().lower()
        if t.startswith("round:"):
            try:
                decimals = int(t.split(":", 1)[1])
            except ValueError as exc:
                raise ConfigError(f"round:N needs an integer N, got {text!r}") from exc
            return cls("scores", decimals)
        return cls(t)

    @property
    def name(self) -> str:
        return self.kind if self.decimals is None else f"round:{self.decimals}"

    @property
    def method(self) -> str:
        """The extraction method these outputs allow."""
        return "copycat" if self.kind == "labels" else "knockoff"

    def apply(self, logits: Tensor) -> Tensor:
        """The victim's answer: labels (n,) int64, or probabilities (n, k) float32."""
        if self.kind == "labels":
            return logits.argmax(1)
        p = F.softmax(logits.float(), 1)
        if self.decimals is not None:
            scale = 10.0**self.decimals
            p = torch.round(p * scale) / scale
        return p


class QueryOracle:
    """The attacker's only access to a victim: answers under an output policy, every input
    counted, never more than ``budget`` inputs in all.

    Args:
        victim: the model queried (a query-only Classifier is fine: only its outputs are used).
        budget: the most inputs the attacker may ask about, in total.
        output: what each answer reveals.
    """

    def __init__(self, victim: Classifier, *, budget: int, output: OutputPolicy) -> None:
        if budget < 1:
            raise ConfigError(f"budget must be >= 1 query, got {budget}")
        self._victim = victim
        self.budget = budget
        self.output = output
        self.used = 0

    @property
    def remaining(self) -> int:
        return self.budget - self.used

    @property
    def num_classes(self) -> int:
        return self._victim.num_classes

    def query(self, x: Tensor) -> Tensor:
        """Ask about ``x`` (NCHW in the victim's box): labels (n,) or scores (n, k)."""
        n = int(x.shape[0])
        if n > self.remaining:
            raise BudgetExceeded(
                f"query budget of {self.budget} exceeded ({self.used} used, {n} more asked); "
                "raise the budget or ask about fewer inputs"
            )
        self.used += n
        parts = [
            self.output.apply(self._victim.logits(x[i : i + CHUNK])) for i in range(0, n, CHUNK)
        ]
        return torch.cat(parts)


@dataclass(frozen=True, kw_only=True)
class SubstituteRecipe:
    """How the substitute is trained (with :func:`aegis.training.train_classifier`).

    Args:
        arch: ``mnist_cnn``, ``digits_cnn`` or ``tiny_mlp``; ``None`` picks by input shape.
        epochs: passes over the queried inputs.
        min_steps: at least this many optimizer steps (small budgets get more epochs).
        lr, batch_size, augment_shift, weight_decay: as in ``train_classifier``.
    """

    arch: str | None = None
    epochs: int = 20
    min_steps: int = 200
    lr: float = 2e-3
    batch_size: int = 64
    augment_shift: int = 0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.min_steps < 0:
            raise ConfigError(f"min_steps must be >= 0, got {self.min_steps}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    def arch_for(self, shape: tuple[int, int, int]) -> str:
        if self.arch is not None:
            return self.arch
        return {(1, 28, 28): "mnist_cnn", (1, 8, 8): "digits_cnn"}.get(shape, "tiny_mlp")

    def epochs_for(self, n: int) -> int:
        batches = math.ceil(n / self.batch_size)
        return max(self.epochs, math.ceil(self.min_steps / batches))


def query_order(n_pool: int, seed: int) -> Tensor:
    """The order in which the pool is queried (a seeded permutation; budgets take prefixes)."""
    return torch.randperm(n_pool, generator=torch.Generator().manual_seed(seed))


def extract(
    victim: Classifier,
    pool: Tensor,
    *,
    budget: int,
    output: OutputPolicy,
    recipe: SubstituteRecipe | None = None,
    seed: int = 0,
) -> tuple[Classifier, dict[str, Any]]:
    """Copycat (``labels``) or Knockoff (scores) extraction with at most ``budget`` queries.

    Args:
        victim: the model under attack; only its answers through a :class:`QueryOracle` are used.
        pool: the attacker's unlabeled inputs, NCHW in the victim's input shape.
        budget: queries allowed (and used: the first ``budget`` of ``query_order``).
        output: what the victim reveals per query.
        recipe: the substitute's training recipe.
        seed: seeds the query order and the substitute's training.

    Returns:
        The substitute and a dict with ``method``, ``output``, ``budget``, ``queries`` (used, as
        counted by the oracle), the substitute's ``arch`` and ``epochs`` and ``seconds``.
    """
    from aegis.training import train_classifier

    recipe = recipe or SubstituteRecipe()
    oracle = QueryOracle(victim, budget=budget, output=output)
    if tuple(pool.shape[1:]) != victim.input_shape:
        raise DataError(
            f"query pool inputs have shape {tuple(pool.shape[1:])} but the victim expects "
            f"{victim.input_shape}; resize the pool (run_extraction does it for you)"
        )
    if budget > pool.shape[0]:
        raise ConfigError(
            f"budget {budget} exceeds the query pool of {pool.shape[0]} inputs; lower the "
            "budget or give a larger query set"
        )
    start = time.perf_counter()
    xq = pool[query_order(int(pool.shape[0]), seed)[:budget]]
    answers = oracle.query(xq)
    arch = recipe.arch_for(victim.input_shape)
    epochs = recipe.epochs_for(budget)
    common: dict[str, Any] = {
        "arch": arch,
        "num_classes": oracle.num_classes,
        "epochs": epochs,
        "lr": recipe.lr,
        "batch_size": recipe.batch_size,
        "seed": seed,
        "augment_shift": recipe.augment_shift,
        "weight_decay": recipe.weight_decay,
    }
    if output.kind == "labels":
        substitute = train_classifier(xq, answers, **common)
    else:
        substitute = train_classifier(xq, answers.argmax(1), soft_targets=answers, **common)
    substitute.name = f"substitute-{output.method}-{output.name}-{budget}"
    info = {
        "method": output.method,
        "output": output.name,
        "budget": budget,
        "queries": oracle.used,
        "arch": arch,
        "epochs": epochs,
        "seconds": time.perf_counter() - start,
    }
    return substitute, info


def transfer_attack(
    substitute: Classifier,
    victim: Classifier,
    x: Tensor,
    y: Tensor,
    *,
    attack: str = "pgd",
    norm: str = "linf",
    eps: float = 0.3,
    steps: int | None = 40,
    seed: int = 0,
) -> dict[str, Any]:
    """Craft adversarial examples on the substitute (white box) and send them to the victim.

    Every point is attacked on the substitute (also the ones it gets wrong), for all its steps
    (no early stop once the substitute is fooled); ``success_rate``
    is the share of the points the victim classifies correctly that it misclassifies after
    the attack; ``substitute_success_rate`` the same on the substitute itself."""
    from aegis.engine import evaluate
    from aegis.registry import create, get_spec
    from aegis.threat import ThreatModel

    params: dict[str, Any] = {"steps": steps}
    if "early_stop" in get_spec(attack).parameters():
        params["early_stop"] = False  # the whole budget: stopping at the substitute's boundary
        # gives examples that barely cross it and rarely transfer
    algo = create(attack, **params)
    run = evaluate(
        substitute, x, y, algo, ThreatModel(norm, eps), seed=seed, attack_misclassified=True
    )
    x_adv = torch.from_numpy(np.ascontiguousarray(run.x_adv, dtype=np.float32))
    clean_ok = victim.predict(x) == y
    adv_ok = victim.predict(x_adv) == y
    fooled = clean_ok & ~adv_ok
    sub_ok = substitute.predict(x) == y
    sub_fooled = sub_ok & (substitute.predict(x_adv) != y)
    return {
        "attack": algo.to_dict(),
        "threat": {"norm": norm, "eps": eps},
        "n": int(x.shape[0]),
        "victim_correct": int(clean_ok.sum()),
        "victim_fooled": int(fooled.sum()),
        "success_rate": _share(int(fooled.sum()), int(clean_ok.sum())),
        "victim_accuracy_under_attack": _share(int(adv_ok.sum()), int(x.shape[0])),
        "substitute_success_rate": _share(int(sub_fooled.sum()), int(sub_ok.sum())),
        "seconds": run.seconds,
    }


def fidelity(substitute: Classifier, victim_pred: Tensor, x: Tensor) -> float:
    """The share of ``x`` on which the substitute predicts what the victim predicts."""
    return float((substitute.predict(x) == victim_pred).float().mean())


def _share(num: int, den: int) -> float | None:
    return num / den if den else None


def fit_pool(pool: Tensor, shape: tuple[int, int, int]) -> tuple[Tensor, list[int] | None]:
    """The pool in the victim's input shape: resized bilinearly when only height and width
    differ (returns the original (H, W), else ``None``)."""
    have = tuple(int(v) for v in pool.shape[1:])
    if have == shape:
        return pool, None
    if len(have) != 3 or have[0] != shape[0]:
        raise DataError(
            f"query data has shape {have} but the victim expects {shape}; give query data "
            f"with {shape[0]} channel(s)"
        )
    resized = F.interpolate(pool, size=shape[1:], mode="bilinear", align_corners=False)
    return resized.clamp(0.0, 1.0), [have[1], have[2]]
