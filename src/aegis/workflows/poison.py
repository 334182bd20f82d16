"""The poison workflow, the Python call behind ``aegis poison``: poison, train, measure,
detect, clean, retrain (the algorithms are in :mod:`aegis.poisoning`).

``run_poisoning`` poisons the training split of a dataset, trains the victim on it with
:func:`aegis.zoo.train.train_classifier` and the same model on the clean split (same seed, same
recipe), and measures both on the test split: clean accuracy, per-class precision/recall/F1 and,
for a backdoor, the attack success rate on triggered test inputs whose true class is not the
target. Each poison detector then flags training points of the poisoned model; its precision and
recall against the ground-truth mask are reported, and the model is retrained on the points it
kept (same recipe) and measured again.

Spectral ε. A spectral detector given by name flags at most 1.5 · ε of a class, ε being the
paper's upper bound on the poisoned share of a class. ``spectral_eps`` sets it; by default, in
``adaptive`` mode it is 0.5 (``DEFENDER_EPS``, a bound a defender can assume without knowing the
attack: a poison that is most of its class is no outlier); in ``fixed`` mode, for a targeted
attack, the share the poison would be of that class if it all landed there,
``min(1, n_poisoned / n_target)`` with ``n_target`` the class's size in the poisoned set (about
half of class 0 for BadNets at 10% into one of ten classes; ε = rate would cap the recall at
1.5 · rate · n_target / n_poisoned); otherwise the rate. results.json says where ε came from
(``config.spectral_eps_source``).

    >>> results = run_poisoning("digits", attack="badnets", rate=0.1, target=0, epochs=5)
    >>> results["poisoning"]["models"]["poisoned"]["backdoor"]["rate"]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aegis.errors import DataError
from aegis.io import rundir
from aegis.io.data import Dataset, load_dataset
from aegis.metrics import flag_precision_recall
from aegis.model import Classifier
from aegis.poisoning.attacks import PoisonedSet, PoisoningAttack, Trigger
from aegis.poisoning.detection import PoisonDetector
from aegis.poisoning.run import create_attack, create_detector, evaluate_model
from aegis.workflows.result import WorkflowResult
from aegis.workflows.rundir_writer import write_results

__all__ = ["run_poisoning"]

DEFAULT_ARCH = {(1, 28, 28): "mnist_cnn", (1, 8, 8): "digits_cnn"}


DEFENDER_EPS = 0.5  # spectral ε by default in adaptive mode: no attacker knowledge

TRAINER = "aegis.zoo.train.train_classifier"  # as results.json names the training loop


def run_poisoning(
    dataset: str = "digits",
    *,
    attack: PoisoningAttack | str = "badnets",
    rate: float = 0.1,
    target: int | None = 0,
    source: int | None = None,
    trigger: str | Trigger = "square:size=3,pos=br",
    pattern: str = "checkerboard",
    alpha: float = 0.2,
    attack_eps: float = 0.3,
    attack_steps: int = 20,
    defenses: Sequence[PoisonDetector | str] = ("activation-clustering", "spectral"),
    spectral_eps: float | None = None,
    spectral_mode: str = "adaptive",
    ac_analysis: str = "exclusion",
    arch: str | None = None,
    epochs: int = 5,
    lr: float = 2e-3,
    batch_size: int = 64,
    augment_shift: int = 0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = False,
) -> WorkflowResult:
    """Poison a training set, train on it, detect the poison, retrain on the cleaned set;
    return (and write to ``out``/results.json) the results (kind ``poison``; ``records``: the
    poisoned training set with its ground-truth mask).

    Args:
        dataset: a built-in (``mnist``, ``digits``: its train split is poisoned, its test split
            scores), or an ``.npz`` file with ``x_train``/``y_train``/``x_test``/``y_test``
            (whatever ``aegis.io.data.load_dataset`` reads with ``split``).
        attack: an attack instance, or a name of ``ATTACKS`` built from ``rate``, ``target``,
            ``source`` (label-flip), ``trigger`` (badnets, label-consistent: a
            :meth:`Trigger.parse` spec), ``pattern`` and ``alpha`` (blend), ``attack_eps`` and
            ``attack_steps`` (label-consistent's PGD on the clean model).
        defenses: detectors (instances or names of ``DETECTORS``); empty for none.
        spectral_eps: ε of a spectral detector given by name, the paper's upper bound on the
            poisoned share of a class (default: see "Spectral ε" in the module's docstring).
        spectral_mode: ``adaptive`` (flag the separated far mode of each class, at most
            1.5 · ε of it) or ``fixed`` (the paper: the 1.5 · ε · n_class highest scores).
        ac_analysis: activation clustering's class test: ``exclusion`` (retrains once with
            this run's recipe), ``silhouette`` or ``size``.
        arch: ``mnist_cnn``, ``digits_cnn`` or ``tiny_mlp`` (default: the dataset's CNN).
        epochs, lr, batch_size, augment_shift: the training recipe, shared by every model.
        train_limit, test_limit: use only the first N points of each split.
        seed: seeds the poisoning, every training run and the detectors.
        out: a run directory for results.json (None: write nothing).
    """
    start = time.perf_counter()
    algo = _attack(attack, rate, target, source, trigger, pattern, alpha, attack_eps, attack_steps)
    data = _Splits.load(dataset, train_limit, test_limit)
    model_arch = arch or DEFAULT_ARCH.get(data.train.input_shape, "tiny_mlp")
    recipe = _Recipe(model_arch, data.k, epochs, lr, batch_size, augment_shift, seed, progress)
    clean_model = recipe.fit(data.x, data.y)
    poisoned = algo.poison(data.x, data.y, seed=seed, num_classes=data.k, model=clean_model)
    victim = recipe.fit(poisoned.x, poisoned.y)
    models = {"clean": data.measure(clean_model, algo), "poisoned": data.measure(victim, algo)}
    spectral_eps, eps_source = _spectral_eps(spectral_eps, spectral_mode, algo, poisoned)
    params = _detector_params(recipe, spectral_eps, spectral_mode, ac_analysis)
    measure = partial(data.measure, algo=algo)
    detected = _defend(defenses, params, victim, poisoned, recipe.fit, measure)
    results: dict[str, Any] = {
        **rundir.header(seed, "poisoning"),
        "data": {"train": data.train.to_dict(), "test": data.test.to_dict()},
        "config": {
            "attack": algo.to_dict(),
            "training": recipe.to_dict(),
            "spectral_eps_source": eps_source,
        },
        "poisoning": _summary(data, poisoned, models, detected),
        "seconds": time.perf_counter() - start,
        "files": {},
    }
    written = results if out is None else write_results(out, results)
    return WorkflowResult.of("poison", written, records=poisoned)


def _attack(
    attack: PoisoningAttack | str,
    rate: float,
    target: int | None,
    source: int | None,
    trigger: str | Trigger,
    pattern: str,
    alpha: float,
    eps: float,
    steps: int,
) -> PoisoningAttack:
    """The attack instance, or the named one built from its parameters."""
    if isinstance(attack, PoisoningAttack):
        return attack
    return create_attack(
        attack,
        rate=rate,
        target=target,
        source=source,
        trigger=trigger,
        pattern=pattern,
        alpha=alpha,
        eps=eps,
        steps=steps,
    )


@dataclass(frozen=True)
class _Splits:
    """The labeled train split (to poison) and test split (to score) of a dataset, with its
    number of classes."""

    train: Dataset
    test: Dataset
    x: Tensor
    y: Tensor
    xt: Tensor
    yt: Tensor
    k: int

    @classmethod
    def load(cls, dataset: str, train_limit: int | None, test_limit: int | None) -> _Splits:
        train = load_dataset(dataset, split="train", limit=train_limit)
        test = load_dataset(dataset, split="test", limit=test_limit)
        x, y = train.tensors()
        xt, yt = test.tensors()
        if y is None or yt is None:
            raise DataError(f"{dataset} has no labels; poisoning needs a labeled training set")
        k = train.num_classes or int(max(int(y.max()), int(yt.max()))) + 1
        return cls(train, test, x, y, xt, yt, k)

    def measure(self, model: Classifier, algo: PoisoningAttack) -> dict[str, Any]:
        """The model's figures on the test split (with the attack's backdoor success)."""
        return evaluate_model(model, self.xt, self.yt, self.k, algo)


@dataclass(frozen=True)
class _Recipe:
    """The one training recipe of every model of a run (clean, poisoned, cleaned)."""

    arch: str
    num_classes: int
    epochs: int
    lr: float
    batch_size: int
    augment_shift: int
    seed: int
    progress: bool

    def fit(self, xs: Tensor, ys: Tensor) -> Classifier:
        from aegis.zoo.train import train_classifier

        return train_classifier(
            xs,
            ys,
            arch=self.arch,
            num_classes=self.num_classes,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=self.seed,
            augment_shift=self.augment_shift,
            progress=self.progress,
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``config.training`` section of results.json."""
        recipe = {"arch": self.arch, "epochs": self.epochs, "lr": self.lr}
        recipe |= {"batch_size": self.batch_size, "augment_shift": self.augment_shift}
        return recipe | {"seed": self.seed, "trainer": TRAINER}


def _detector_params(
    recipe: _Recipe, spectral_eps: float, spectral_mode: str, ac_analysis: str
) -> dict[str, dict[str, Any]]:
    """The parameters of each detector given by name: spectral's ε and mode, activation
    clustering's class test (its exclusion test retrains with the run's recipe)."""
    return {
        "spectral": {"eps": spectral_eps, "mode": spectral_mode},
        "activation-clustering": {
            "seed": recipe.seed,
            "analysis": ac_analysis,
            "arch": recipe.arch,
            "epochs": recipe.epochs,
            "lr": recipe.lr,
            "batch_size": recipe.batch_size,
        },
    }


def _spectral_eps(
    spectral_eps: float | None, spectral_mode: str, algo: PoisoningAttack, poisoned: PoisonedSet
) -> tuple[float, str]:
    """The spectral detector's ε, and where it comes from (stored beside the figures)."""
    if spectral_eps is not None:
        return spectral_eps, "given"
    if spectral_mode == "adaptive":
        return DEFENDER_EPS, (
            "a defender's prior: at most half of any class is poison (no attacker figure)"
        )
    attack_target = getattr(algo, "target", None)
    if attack_target is None:
        return algo.rate, "the poison rate"
    n_target = int((poisoned.y == int(attack_target)).sum())
    # The attacker's own figure: a best case for the defense, which in practice must assume
    # an upper bound; results.json says so beside the detection figures.
    return min(1.0, poisoned.n_poisoned / max(n_target, 1)), (
        "oracle: the poisoned share of the target class (best case for the defense)"
    )


def _defend(
    defenses: Sequence[PoisonDetector | str],
    params: dict[str, dict[str, Any]],
    victim: Classifier,
    poisoned: PoisonedSet,
    fit: Callable[[Tensor, Tensor], Classifier],
    measure: Callable[[Classifier], dict[str, Any]],
) -> dict[str, Any]:
    """Each detector: flag the poisoned set, score the flags against the ground truth, retrain
    on the points kept and measure the cleaned model."""
    detected: dict[str, Any] = {}
    for d in defenses:
        det = d if isinstance(d, PoisonDetector) else create_detector(d, **params.get(d, {}))
        flags = det.detect(victim, poisoned.x, poisoned.y)
        keep = torch.from_numpy(~flags.flagged)
        if int(keep.sum()) < 2:
            raise DataError(f"{det.name} flagged {int((~keep).sum())} points, leaving too few")
        cleaned = fit(poisoned.x[keep], poisoned.y[keep])
        detected[det.name] = {
            "detector": det.to_dict(),
            "detection": flag_precision_recall(flags.flagged, poisoned.mask.numpy()),
            "classes": flags.classes,
            "kept": int(keep.sum()),
            "cleaned": measure(cleaned),
        }
    return detected


def _summary(
    data: _Splits, poisoned: PoisonedSet, models: dict[str, Any], detected: dict[str, Any]
) -> dict[str, Any]:
    """The ``poisoning`` section of results.json."""
    return {
        "n_train": int(data.x.shape[0]),
        "n_test": int(data.xt.shape[0]),
        "num_classes": data.k,
        "n_poisoned": poisoned.n_poisoned,
        "rate": poisoned.rate,
        "labels_changed": int((poisoned.y != data.y).sum()),
        "models": models,
        "defenses": detected,
    }
