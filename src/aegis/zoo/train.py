"""A seeded trainer for the reference models of the built-in datasets.

``train_reference("mnist", out_dir=...)`` trains :func:`~aegis.zoo.architectures.mnist_cnn` on
the fixed 4,000-image training split and writes ``mnist_cnn.safetensors`` with a sidecar
``mnist_cnn.json`` (factory, metadata, accuracy, hyper-parameters). ``defense=NAME`` trains with
a robust-training defense from :mod:`aegis.defenses.training` — ``pgd-at`` (Madry et al. 2018),
``trades`` (Zhang et al. 2019), ``fast-at`` (Wong et al. 2020) or ``mart`` (Wang et al. 2020) —
in one shared loop: every batch is crafted against the current weights by the defense's attack,
with ε ramped up linearly over the first ``eps_ramp`` share of training steps (the same ramp for
every defense, so they are compared on equal terms; Fast-AT's step is ``step_ratio`` · the
current ε, and on MNIST Fast-AT follows its own recipe: SGD, full ε from the first step and a
step of 1.0 · ε, see ``RECIPES``).
The result is ``<dataset>_cnn_<defense>.safetensors``, except PGD-AT, which keeps its earlier
name ``<dataset>_cnn_pgd.safetensors`` (``adversarial="pgd"`` is an alias of ``pgd-at``).

Training is deterministic for a seed (on one machine and thread count): the global RNG is forked,
shuffling and attacks draw from their own generators, and deterministic algorithms are enforced
during the run. A model whose file and sidecar already exist with the same hyper-parameters is
reused unless ``force=True``.

Runs are resumable: after every epoch the weights, optimizer and schedule, the three RNG states,
the epoch and a hash of the hyper-parameters go to ``<model>.ckpt.pt`` beside the output
(tensors and primitive types only, loaded with ``weights_only=True``). Rerunning the same call
resumes from the last finished epoch and ends with the same weights, bit for bit, as an
uninterrupted run; a checkpoint with other hyper-parameters is ignored. The checkpoint is deleted
once the model and its sidecar are written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aegis.attacks.pgd import PGD
from aegis.defenses.training import (
    TrainingDefense,
    create_training_defense,
    get_training_spec,
)
from aegis.errors import ConfigError, DataError, ModelError
from aegis.io.data import BUILTINS, load_dataset
from aegis.io.digest import file_sha256
from aegis.io.sidecar import METADATA_KEYS, read_sidecar, write_sidecar
from aegis.model import Classifier, ModelInfo
from aegis.progress import progress_bar
from aegis.threat import ThreatModel
from aegis.zoo.architectures import ARCHITECTURES, DATASET_ARCH

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_VERSION = 1
FACTORY_PREFIX = "aegis.zoo.architectures:"
SGD_WEIGHT_DECAY = 5e-4  # with optimizer="sgd" (the usual value for SGD-trained CNNs)
SCHEDULES = ("onecycle", "triangle")
"""LR schedules: torch's one-cycle (cosine, peak at 30%, momentum cycled for SGD), or a
linear triangle from 0 to the peak at 40% of the steps and back to 0 (Wong et al.'s Fast-AT,
ART's FBF), momentum constant."""
TRAIN_SETTINGS = ("schedule", "weight_decay", "dropout", "grad_clip")
ADVERSARIAL = ("pgd",)
"""Values of the older ``adversarial`` argument: ``"pgd"`` is ``defense="pgd-at"``."""


@dataclass(frozen=True)
class Recipe:
    """Per-dataset defaults (each can be overridden by an argument of ``train_reference``)."""

    epochs: int
    adv_epochs: int
    lr: float
    shift: int  # random translation augmentation in pixels for standard training (0: none)
    adv_shift: int  # the same for adversarial training (it slows down robust learning)
    attack_steps: int
    eps_ramp: float  # share of the training steps over which ε grows linearly from 0
    defense_lr: tuple[tuple[str, float], ...] = ()  # per-defense peak learning rates
    defense_optimizer: tuple[tuple[str, str], ...] = ()  # per-defense optimizer (default adam)
    defense_ramp: tuple[tuple[str, float], ...] = ()  # per-defense ε ramp share
    # per-defense hyper-parameters of the defense itself: (defense, parameter, value)
    defense_defaults: tuple[tuple[str, str, float], ...] = ()
    # per-defense settings of the training loop itself: (defense, setting, value), settings
    # "schedule" ("onecycle" or "triangle"), "weight_decay" (SGD's L2 penalty, default
    # SGD_WEIGHT_DECAY), "dropout" (the architecture's dropout rate) and "grad_clip" (the
    # gradient-norm limit, none by default); only those set enter the model's hyper-parameters
    defense_train: tuple[tuple[str, str, float | str], ...] = ()

    def lr_for(self, defense: str | None) -> float:
        return dict(self.defense_lr).get(defense or "", self.lr)

    def optimizer_for(self, defense: str | None) -> str:
        return dict(self.defense_optimizer).get(defense or "", "adam")

    def ramp_for(self, defense: str | None) -> float:
        return dict(self.defense_ramp).get(defense or "", self.eps_ramp)

    def params_for(self, defense: str | None) -> dict[str, float]:
        return {k: v for d, k, v in self.defense_defaults if d == defense}

    def train_for(self, defense: str | None) -> dict[str, float | str]:
        return {k: v for d, k, v in self.defense_train if d == defense}


RECIPES: dict[str, Recipe] = {
    # Fast-AT on MNIST: with Adam (peak 5e-3, Wong et al.'s MNIST rate) and the ε ramp it
    # overfits catastrophically: 0.20 robust accuracy under APGD-CE + APGD-T after 5 epochs
    # (PGD-20 said 0.44). SGD with momentum 0.9, weight decay 5e-4, a one-cycle peak of 0.2
    # and full ε from the first step (the regime of ART's FBF trainer) reached 0.53 on the
    # same 200 points; a peak of 0.05 only 0.13 (docs/benchmarks.md). A step of 1.0·ε
    # instead of the paper's 1.25·ε raised the median over seeds 0-2 from 0.400 to 0.460 on
    # test points 200-399 (a peak of 0.3 fell to 0.260), and from 0.475 to 0.530 on the
    # benchmark's first 200, where ART's FBF reached 0.540 (docs/benchmarks.md). On points
    # 200-399, no weight decay and no dropout (as ART's FBF trains) raised the median from
    # 0.400 to 0.475 (FBF 0.480); each alone gave 0.465, a gradient-norm clip of 0.5 0.270,
    # and the triangle schedule of Wong et al. 0.320-0.425 with or without them.
    # TRADES on MNIST: Adam's one-cycle peak of 2e-3 left 5 epochs at 0.42 (median of seeds
    # 0-2, APGD-CE + APGD-T, held-out test points 200-399) against ART's TRADES at 0.51; a
    # peak of 4e-3 gave 0.61 and 6e-3 0.65 (8e-3: 0.70 / 0.68 on seeds 0-1, clean 0.90). The
    # ε ramp made no difference (0.0 / 0.2 / 0.4: 0.42 / 0.385 / 0.42).
    "mnist": Recipe(
        epochs=16,
        adv_epochs=10,
        lr=2e-3,
        shift=2,
        adv_shift=0,
        attack_steps=10,
        eps_ramp=0.4,
        defense_lr=(("fast-at", 0.2), ("trades", 6e-3)),
        defense_optimizer=(("fast-at", "sgd"),),
        defense_ramp=(("fast-at", 0.0),),
        defense_defaults=(("fast-at", "step_ratio", 1.0),),
        defense_train=(("fast-at", "weight_decay", 0.0), ("fast-at", "dropout", 0.0)),
    ),
    "digits": Recipe(
        epochs=30, adv_epochs=30, lr=3e-3, shift=0, adv_shift=0, attack_steps=7, eps_ramp=0.3
    ),
}


@dataclass(frozen=True)
class TrainResult:
    """Where the model was written and how good it is."""

    model_path: Path
    sidecar_path: Path
    test_accuracy: float
    robust_accuracy: float | None
    seconds: float
    epochs: int
    reused: bool = False
    defense: str | None = None
    resumed_from_epoch: int = 0  # finished epochs read back from a checkpoint (0: fresh run)
    noisy_test_accuracy: float | None = None  # under the training noise (noise_sigma models)

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["model_path"] = str(self.model_path)
        out["sidecar_path"] = str(self.sidecar_path)
        return out


def model_filename(dataset: str, adversarial: str | None, noise_sigma: float | None = None) -> str:
    """``<dataset>_cnn[_<suffix>].safetensors``; the suffix of a defense is its name, except
    ``pgd-at`` (and the older ``adversarial="pgd"``), whose suffix is ``pgd``; a base model of
    randomized smoothing trained on Gaussian noise is ``<dataset>_cnn_noise<σ>``."""
    suffix = get_training_spec(adversarial).suffix if adversarial else None
    if noise_sigma is not None:
        suffix = f"noise{noise_sigma:g}"
    return f"{dataset}_cnn{'_' + suffix if suffix else ''}.safetensors"


def checkpoint_path(model_path: Path) -> Path:
    """Where the per-epoch checkpoint of a model being trained lives (beside the model)."""
    return model_path.with_name(model_path.name.removesuffix(".safetensors") + ".ckpt.pt")


def resolve_defense(defense: str | None, adversarial: str | None) -> str | None:
    """The registered defense name for the ``defense`` / older ``adversarial`` arguments."""
    if adversarial not in (None, *ADVERSARIAL):
        raise ConfigError(
            f"adversarial must be None or one of {', '.join(ADVERSARIAL)} (an alias of "
            f"defense='pgd-at'), got {adversarial!r}"
        )
    old = None if adversarial is None else get_training_spec(adversarial).name
    new = None if defense is None else get_training_spec(defense).name
    if old and new and old != new:
        raise ConfigError(
            f"adversarial={adversarial!r} means defense 'pgd-at', which contradicts "
            f"defense={defense!r}; pass only defense"
        )
    return new or old


def train_reference(
    dataset: str,
    *,
    out_dir: Path,
    epochs: int | None = None,
    defense: str | None = None,
    defense_params: dict[str, Any] | None = None,
    adversarial: str | None = None,
    eps: float = 0.3,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    force: bool = False,
    resume: bool = True,
    lr: float | None = None,
    augment_shift: int | None = None,
    attack_steps: int | None = None,
    attack_step_size: float | None = None,
    eps_ramp: float | None = None,
    attack_early_stop: bool = False,
    eval_steps: int = 40,
    optimizer: str | None = None,
    noise_sigma: float | None = None,
) -> TrainResult:
    """Train (or reuse) the reference model of a built-in dataset and save it with a sidecar.

    Args:
        dataset: ``mnist`` or ``digits``; trained on its fixed train split, scored on test.
        out_dir: folder for ``<dataset>_cnn[_<defense>].safetensors`` and its ``.json`` sidecar.
        epochs: passes over the training split (default per dataset, see ``RECIPES``).
        defense: robust training, ``pgd-at``, ``trades``, ``fast-at`` or ``mart`` (see
            :mod:`aegis.defenses.training`); ``None`` for standard training.
        defense_params: the defense's own hyper-parameters (``beta`` for trades, ``lam`` for
            mart, ``step_ratio`` for fast-at); ``None`` values keep the defaults, which are
            the defense's own unless ``Recipe.defense_defaults`` sets one for the dataset
            (MNIST: fast-at steps by 1.0 · ε, not the paper's 1.25 · ε).
        adversarial: the older spelling: ``"pgd"`` is ``defense="pgd-at"``.
        eps: L∞ budget of the adversarial training and of the robust evaluation.
        seed: seeds initialization, dropout, shuffling, augmentation and the attacks.
        batch_size: training batch size.
        progress: show a rich progress bar over the batches.
        force: retrain even if a model with the same hyper-parameters exists.
        resume: continue from ``<model>.ckpt.pt`` when it holds the same hyper-parameters.
        lr: peak learning rate of Adam with a one-cycle schedule (default per dataset, and
            per defense where ``Recipe.defense_lr`` says so).
        augment_shift: random translation by up to this many pixels (default per dataset).
        attack_steps: steps of the iterative crafting attack per batch (default per dataset;
            ``fast-at`` always takes one).
        attack_step_size: step size of the iterative crafting attack (default
            2.5 · ε_current / steps; ``fast-at`` uses ``step_ratio`` · ε_current).
        eps_ramp: share of the training steps over which ε grows from 0 to ``eps``.
        attack_early_stop: stop each training example's PGD once it is misclassified (about
            25% faster on MNIST; ``pgd-at`` and ``mart`` only); the default ``False`` runs every
            step as in Madry et al., which gave 4-6 points more PGD robust accuracy for the
            same epochs.
        eval_steps: steps of the PGD (random start, step 2.5 · ε / steps) that scores the
            robust accuracy on the test split, when a defense is set.
        optimizer: ``adam``, or ``sgd`` (momentum 0.9, weight decay 5e-4); default per
            dataset and defense (``Recipe.defense_optimizer``: SGD for fast-at on MNIST).
            ``Recipe.defense_train`` may set, per defense, the LR schedule (``onecycle`` or
            ``triangle``), the weight decay, the architecture's dropout and a gradient-norm
            clip; they are recorded in the sidecar's ``training`` block.
        noise_sigma: train on Gaussian-noise-augmented inputs, N(0, σ²) added to every batch
            and not clipped (Cohen et al. 2019): the base classifier of randomized smoothing
            (``aegis certify``). Standard training only; the sidecar adds the test accuracy
            under that noise.
    """
    recipe = RECIPES.get(dataset)
    if recipe is None or dataset not in DATASET_ARCH:
        raise ConfigError(
            f"no reference model for dataset {dataset!r}; use one of {', '.join(DATASET_ARCH)}"
        )
    name = resolve_defense(defense, adversarial)
    if name is None and defense_params:
        raise ConfigError("defense_params need a defense; pass defense='trades' (or another)")
    own = {k: v for k, v in (defense_params or {}).items() if v is not None}
    strategy = (
        None
        if name is None
        else create_training_defense(name, **{**recipe.params_for(name), **own})
    )
    n_epochs = epochs if epochs is not None else (recipe.adv_epochs if name else recipe.epochs)
    default_shift = recipe.adv_shift if name else recipe.shift
    params: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "split": "train",
        "arch": DATASET_ARCH[dataset],
        "factory_kwargs": {},
        "epochs": n_epochs,
        # PGD-AT keeps the record of the earlier adversarial="pgd" trainer (same weights), so
        # models trained before defenses existed stay reusable.
        "adversarial": None if name is None else ("pgd" if name == "pgd-at" else name),
        "seed": seed,
        "batch_size": batch_size,
        "optimizer": optimizer if optimizer is not None else recipe.optimizer_for(name),
        "schedule": "onecycle",
        "lr": lr if lr is not None else recipe.lr_for(name),
        "augment_shift": augment_shift if augment_shift is not None else default_shift,
    }
    _apply_train_settings(params, recipe.train_for(name))
    if noise_sigma is not None:  # only when set: the hyper-parameters of older models stand
        if name is not None:
            raise ConfigError(
                "noise_sigma trains the base model of randomized smoothing; it does not "
                f"combine with a defense ({name}): drop one of them"
            )
        params["noise_sigma"] = noise_sigma
    if strategy is not None:
        _check_crafting(strategy, attack_steps, attack_step_size, attack_early_stop)
        params.update(
            eps=eps,
            norm="linf",
            attack=strategy.crafting,
            attack_steps=(attack_steps if attack_steps is not None else recipe.attack_steps)
            if strategy.iterative
            else 1,
            attack_step_size=attack_step_size,
            eps_ramp=eps_ramp if eps_ramp is not None else recipe.ramp_for(name),
            attack_early_stop=attack_early_stop,
            eval_steps=eval_steps,
        )
        if name != "pgd-at":
            params.update(defense=name, defense_params=strategy.to_dict())
    _validate(params)

    out_dir = Path(out_dir)
    model_path = out_dir / model_filename(dataset, name, noise_sigma)
    side_path = model_path.with_suffix(".json")
    if not force:
        reused = _reuse(model_path, side_path, params)
        if reused is not None:
            log.info("reusing %s (same hyper-parameters; force=True retrains)", model_path)
            return reused

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = checkpoint_path(model_path)
    start = time.perf_counter()
    with _seeded(seed):
        module, info = _build(params)
        fit = _fit(module, info, params, strategy, ckpt_path, resume=resume, progress=progress)
    seconds = fit.seconds_before + time.perf_counter() - start

    digest = _save_weights(module, model_path, params)
    spec = None if name is None else get_training_spec(name)
    write_sidecar(
        model_path,
        info,
        factory=FACTORY_PREFIX + params["arch"],
        factory_kwargs=params["factory_kwargs"],
        dataset=dataset,
        split="train",
        evaluated_on="test",
        seed=seed,
        epochs=n_epochs,
        test_accuracy=fit.test_accuracy,
        robust_accuracy=fit.robust_accuracy,
        robust_eval=fit.robust_eval,
        noisy_test_accuracy=fit.noisy_accuracy,
        defense=None
        if spec is None or strategy is None
        else {
            "name": spec.name,
            "paper": spec.paper,
            "eps": eps,
            "norm": "linf",
            "attack": strategy.crafting,
            "params": strategy.to_dict(),
        },
        training=params,
        seconds=round(seconds, 3),
        train_seconds=round(fit.train_seconds, 3),
        resumed_from_epoch=fit.resumed_from_epoch,
        sha256=digest,
        torch_version=torch.__version__,
        num_threads=torch.get_num_threads(),
    )
    ckpt_path.unlink(missing_ok=True)  # the model and sidecar are written: nothing to resume
    log.info(
        "trained %s in %.1f s: test accuracy %.4f%s",
        model_path.name,
        seconds,
        fit.test_accuracy,
        ""
        if fit.robust_accuracy is None
        else f", PGD robust accuracy {fit.robust_accuracy:.4f} at eps {eps}",
    )
    return TrainResult(
        model_path,
        side_path,
        fit.test_accuracy,
        fit.robust_accuracy,
        seconds,
        n_epochs,
        defense=name,
        resumed_from_epoch=fit.resumed_from_epoch,
        noisy_test_accuracy=fit.noisy_accuracy,
    )


def _check_crafting(
    strategy: TrainingDefense,
    attack_steps: int | None,
    attack_step_size: float | None,
    attack_early_stop: bool,
) -> None:
    name = strategy.registry_name
    if not strategy.iterative and attack_steps not in (None, 1):
        raise ConfigError(
            f"{name} takes one attack step per batch, got attack_steps={attack_steps}"
        )
    if not strategy.iterative and attack_step_size is not None:
        raise ConfigError(
            f"{name} steps by step_ratio · eps; set defense_params={{'step_ratio': ...}} "
            "instead of attack_step_size"
        )
    if attack_early_stop and not strategy.early_stop_ok:
        raise ConfigError(f"attack_early_stop applies to pgd-at and mart, not {name}")


def _apply_train_settings(params: dict[str, Any], settings: dict[str, float | str]) -> None:
    """Put a recipe's loop settings into the hyper-parameters: only those it sets, so models
    trained before a setting existed keep their hash and stay reusable."""
    for key, value in settings.items():
        if key not in TRAIN_SETTINGS:
            raise ConfigError(f"unknown training setting {key!r}; use one of {TRAIN_SETTINGS}")
        if key == "dropout":
            params["factory_kwargs"] = {**params["factory_kwargs"], "dropout": float(value)}
        else:
            params[key] = value


def _validate(params: dict[str, Any]) -> None:
    if params["optimizer"] not in ("adam", "sgd"):
        raise ConfigError(f"optimizer must be adam or sgd, got {params['optimizer']!r}")
    if params["schedule"] not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {SCHEDULES}, got {params['schedule']!r}")
    clip = params.get("grad_clip")
    if clip is not None and not (math.isfinite(clip) and clip > 0):
        raise ConfigError(f"grad_clip must be > 0, got {clip}")
    if params.get("weight_decay", 0.0) < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {params['weight_decay']}")
    if params["epochs"] < 1:
        raise ConfigError(f"epochs must be >= 1, got {params['epochs']}")
    if params["batch_size"] < 1:
        raise ConfigError(f"batch_size must be >= 1, got {params['batch_size']}")
    if not params["lr"] > 0:
        raise ConfigError(f"lr must be > 0, got {params['lr']}")
    if params["augment_shift"] < 0:
        raise ConfigError(f"augment_shift must be >= 0, got {params['augment_shift']}")
    sigma = params.get("noise_sigma")
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"noise_sigma must be > 0, got {sigma}")
    if not params["adversarial"]:
        return
    if not 0 < params["eps"] <= 1:
        raise ConfigError(f"eps must be in (0, 1] for adversarial training, got {params['eps']}")
    if params["attack_steps"] < 1:
        raise ConfigError(f"attack_steps must be >= 1, got {params['attack_steps']}")
    size = params["attack_step_size"]
    if size is not None and not size > 0:
        raise ConfigError(f"attack_step_size must be > 0, got {size}")
    if not 0 <= params["eps_ramp"] <= 1:
        raise ConfigError(f"eps_ramp must be in [0, 1], got {params['eps_ramp']}")
    if params["eval_steps"] < 1:
        raise ConfigError(f"eval_steps must be >= 1, got {params['eval_steps']}")


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG without leaking it, and enforce deterministic algorithms."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic)


def _build(params: dict[str, Any]) -> tuple[nn.Module, ModelInfo]:
    b = BUILTINS[params["dataset"]]
    module = ARCHITECTURES[params["arch"]](**params["factory_kwargs"])
    return module, ModelInfo(num_classes=b.num_classes, input_shape=b.shape)


@dataclass(frozen=True)
class _Fit:
    test_accuracy: float
    robust_accuracy: float | None
    robust_eval: dict[str, object] | None
    resumed_from_epoch: int
    seconds_before: float  # time spent in earlier, interrupted runs of the training loop
    train_seconds: float  # the training loop only, all runs together (no evaluation)
    noisy_accuracy: float | None = None  # test accuracy under the training noise


def _params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def _fit(
    module: nn.Module,
    info: ModelInfo,
    params: dict[str, Any],
    strategy: TrainingDefense | None,
    ckpt_path: Path,
    *,
    resume: bool,
    progress: bool,
) -> _Fit:
    """Train a reference model on its built-in split, then score it on the test split."""
    train = load_dataset(params["dataset"], split="train")
    x, y = train.tensors()
    if y is None:  # built-ins are labeled; this keeps the types honest
        raise ConfigError(f"dataset {params['dataset']} has no labels to train on")
    clf, resumed, seconds_before, train_seconds = _train_loop(
        module, info, x, y, params, strategy, ckpt_path, resume=resume, progress=progress
    )
    test_acc, noisy, robust_acc, robust_eval = _evaluate(clf, params)
    return _Fit(test_acc, robust_acc, robust_eval, resumed, seconds_before, train_seconds, noisy)


def _train_loop(
    module: nn.Module,
    info: ModelInfo,
    x: Tensor,
    y: Tensor,
    params: dict[str, Any],
    strategy: TrainingDefense | None,
    ckpt_path: Path | None,
    *,
    resume: bool,
    progress: bool,
    soft: Tensor | None = None,
) -> tuple[Classifier, int, float, float]:
    """The one training loop: every defense plugs in its crafting and its loss. Returns the
    (unfrozen) Classifier, the epochs read back from a checkpoint, the seconds of earlier
    interrupted runs and of the loop in all runs together. ``soft`` (n, k), rows summing to 1:
    targets of a soft cross-entropy −Σ soft · log softmax(logits) in place of the labels'
    cross-entropy (standard training only; ``y`` then only scores the training accuracy)."""
    seed = params["seed"]
    n, bs, epochs = x.shape[0], params["batch_size"], params["epochs"]
    batches = (n + bs - 1) // bs
    total = epochs * batches
    shuffle = torch.Generator().manual_seed(seed)
    attack_gen = torch.Generator().manual_seed(seed + 1)
    opt: torch.optim.Optimizer = (
        torch.optim.SGD(
            module.parameters(),
            lr=params["lr"],
            momentum=0.9,
            weight_decay=params.get("weight_decay", SGD_WEIGHT_DECAY),
        )
        if params["optimizer"] == "sgd"
        else torch.optim.Adam(
            module.parameters(), lr=params["lr"], weight_decay=params.get("weight_decay", 0.0)
        )
    )
    sched = _scheduler(opt, params["schedule"], params["lr"], total)
    grad_clip = params.get("grad_clip")
    clf = Classifier(module, info, freeze=False, name=params["arch"])
    ramp_steps = params["eps_ramp"] * total if strategy is not None else 0.0
    digest = _params_hash(params)
    first_epoch, step, seconds_before = 0, 0, 0.0
    state = _load_checkpoint(ckpt_path, digest) if resume and ckpt_path is not None else None
    if state is not None:
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_global"])
        shuffle.set_state(state["rng_shuffle"])
        attack_gen.set_state(state["rng_attack"])
        first_epoch, step = int(state["epoch"]), int(state["step"])
        seconds_before = float(state["seconds"])
        log.info("resuming %s after epoch %d/%d", ckpt_path, first_epoch, epochs)
    run_start = time.perf_counter()
    with progress_bar(enabled=progress, transient=False, status=True) as bar:
        label = f"train {params['arch']}" + (f" {strategy.registry_name}" if strategy else "")
        task = bar.add_task(label, total=total, completed=first_epoch * batches, status="")
        for epoch in range(first_epoch, epochs):
            perm = torch.randperm(n, generator=shuffle)
            loss_sum, correct = 0.0, 0
            eps_now = 0.0
            for b in range(batches):
                idx = perm[b * bs : (b + 1) * bs]
                xb, yb = x[idx], y[idx]
                if params["augment_shift"]:
                    xb = random_shift(xb, params["augment_shift"], shuffle)
                if params.get("noise_sigma"):  # Gaussian augmentation, not clipped (Cohen et al.)
                    xb = xb + params["noise_sigma"] * torch.randn(xb.shape, generator=shuffle)
                if strategy is None:
                    module.train()
                    logits = module(xb)
                    if soft is None:
                        loss = F.cross_entropy(logits, yb)
                    else:
                        loss = -(soft[idx] * F.log_softmax(logits, 1)).sum(1).mean()
                else:
                    eps_now = params["eps"] * (
                        min(1.0, (step + 1) / ramp_steps) if ramp_steps else 1.0
                    )
                    x_adv = _craft(clf, module, strategy, xb, yb, eps_now, params, attack_gen)
                    module.train()
                    loss, logits = strategy.loss(module, xb, x_adv, yb)
                opt.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
                opt.step()
                sched.step()
                step += 1
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.detach().argmax(1) == yb).sum())
                status = f"epoch {epoch + 1}/{epochs} loss {loss_sum / min(n, (b + 1) * bs):.3f}"
                if strategy is not None:
                    status += f" eps {eps_now:.3f}"
                bar.update(task, advance=1, status=status)
            log.info(
                "epoch %d/%d: loss %.4f, %s accuracy %.4f",
                epoch + 1,
                epochs,
                loss_sum / n,
                "adversarial" if strategy is not None else "train",
                correct / n,
            )
            if ckpt_path is None:
                continue
            _save_checkpoint(
                ckpt_path,
                {
                    "version": CHECKPOINT_VERSION,
                    "params_hash": digest,
                    "epoch": epoch + 1,
                    "step": step,
                    "seconds": seconds_before + time.perf_counter() - run_start,
                    "model": module.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng_global": torch.get_rng_state(),
                    "rng_shuffle": shuffle.get_state(),
                    "rng_attack": attack_gen.get_state(),
                },
            )
    train_seconds = seconds_before + time.perf_counter() - run_start
    module.eval()
    return clf, first_epoch, seconds_before, train_seconds


def _triangle(total: int) -> Callable[[int], float]:
    """LR factor of the triangle schedule: linear from 0 to 1 at 40% of ``total`` steps, then
    back to 0 at the end; step ``s`` (0-based) trains at the factor of (s + 1) / total."""
    peak = 0.4

    def factor(s: int) -> float:
        t = min(1.0, (s + 1) / total)
        return t / peak if t <= peak else (1.0 - t) / (1.0 - peak)

    return factor


def _scheduler(
    opt: torch.optim.Optimizer, schedule: str, lr: float, total: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if schedule == "triangle":
        return torch.optim.lr_scheduler.LambdaLR(opt, _triangle(total))
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)


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
    defense: str | None = None,
    eps: float = 0.3,
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
        epochs, lr, batch_size, seed, augment_shift: as in :func:`train_reference`.
        weight_decay: Adam's L2 penalty (a regularizer that reduces membership leakage).
        defense: robust training (``pgd-at``, ``trades``, ``fast-at``, ``mart``) at L∞ ``eps``.
        checkpoint: a file for per-epoch checkpoints (resumed when it holds the same run).
        progress: show a progress bar.
        soft_targets: (n, k) non-negative scores, e.g. a victim's probabilities (Knockoff
            Nets): train on the soft cross-entropy to them (rows are normalized to sum to 1)
            instead of the labels' cross-entropy; standard training only.

    Returns:
        A frozen Classifier in eval mode, in the input box [0, 1].
    """
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
    shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    kwargs: dict[str, Any] = {"num_classes": k}
    if arch == "tiny_mlp":
        kwargs["input_shape"] = shape
    name = resolve_defense(defense, None)
    strategy = None if name is None else create_training_defense(name)
    params: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "dataset": "in-memory",
        "n": int(x.shape[0]),
        "arch": arch,
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "optimizer": "adam",
        "schedule": "onecycle",
        "lr": lr,
        "augment_shift": augment_shift,
        "weight_decay": weight_decay,
        "adversarial": name,
    }
    if strategy is not None:
        params.update(
            eps=eps,
            norm="linf",
            attack=strategy.crafting,
            attack_steps=RECIPES["mnist"].attack_steps if strategy.iterative else 1,
            attack_step_size=None,
            eps_ramp=RECIPES["mnist"].eps_ramp,
            attack_early_stop=False,
        )
    params["eval_steps"] = 1  # unused: nothing is scored here; keeps _validate's contract
    _validate(params)
    soft = None if soft_targets is None else _soft_targets(soft_targets, int(x.shape[0]), k)
    if soft is not None:
        if strategy is not None:
            raise ConfigError("soft_targets apply to standard training; drop defense")
        # only runs with soft targets carry the key: the other runs' hashes stay as they were
        params["soft_targets"] = hashlib.sha256(soft.numpy().tobytes()).hexdigest()
    with _seeded(seed):
        module = ARCHITECTURES[arch](**kwargs)
        info = ModelInfo(num_classes=k, input_shape=shape)
        _train_loop(
            module,
            info,
            x.float(),
            y.long(),
            params,
            strategy,
            checkpoint,
            resume=True,
            progress=progress,
            soft=soft,
        )
    return Classifier(module, info, name=arch, source="aegis.zoo.train.train_classifier")


def _soft_targets(scores: Tensor, n: int, k: int) -> Tensor:
    """Validated soft targets: (n, k), finite, non-negative, rows normalized to sum to 1."""
    if scores.shape != (n, k):
        raise DataError(
            f"soft_targets must have shape ({n}, {k}) (one score per input and class), got "
            f"{tuple(scores.shape)}"
        )
    t = scores.detach().float().cpu().contiguous()
    if not torch.isfinite(t).all() or bool((t < 0).any()):
        raise DataError("soft_targets must be finite and >= 0; pass probabilities, not logits")
    total = t.sum(1, keepdim=True)
    if bool((total <= 0).any()):
        raise DataError("every row of soft_targets needs a positive sum; drop all-zero rows")
    return t / total


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write the end-of-epoch state (tensors and primitive types only)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_checkpoint(path: Path, digest: str) -> dict[str, Any] | None:
    """The checkpoint's state if it belongs to these hyper-parameters, else ``None``."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        # A truncated file, a foreign one, or one holding objects other than tensors and
        # primitive types (refused by weights_only): start over, and say so.
        log.warning("ignoring unreadable checkpoint %s (%s); training from scratch", path, exc)
        return None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        log.warning("ignoring checkpoint %s of another format; training from scratch", path)
        return None
    if state.get("params_hash") != digest:
        log.warning(
            "ignoring checkpoint %s: it was written with other hyper-parameters; training "
            "from scratch (it is overwritten after the first epoch)",
            path,
        )
        return None
    return state


def _craft(
    clf: Classifier,
    module: nn.Module,
    strategy: TrainingDefense,
    x: Tensor,
    y: Tensor,
    eps: float,
    params: dict[str, Any],
    generator: torch.Generator,
) -> Tensor:
    """The defense's training inputs against the current weights (eval mode, input gradients
    only: the weights are frozen while the attack runs)."""
    if eps <= 0:
        return x
    module.eval()
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)  # input gradients only: the backward skips weight gradients
    try:
        return strategy.craft(
            clf,
            x,
            y,
            ThreatModel("linf", eps),
            steps=params["attack_steps"],
            step_size=params["attack_step_size"],
            early_stop=params["attack_early_stop"],
            generator=generator,
        )
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        module.train()


def random_shift(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Translate each image by a random integer offset in [-k, k]² (zero fill)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (k, k, k, k))
    dy = torch.randint(0, 2 * k + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * k + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    out = padded.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols]
    return out.permute(0, 3, 1, 2).contiguous()


def _evaluate(
    clf: Classifier, params: dict[str, Any]
) -> tuple[float, float | None, float | None, dict[str, object] | None]:
    """Test accuracy; under the training noise (noise_sigma models); PGD robust accuracy and
    its settings (adversarially trained models)."""
    test = load_dataset(params["dataset"], split="test")
    x, y = test.tensors()
    if y is None:
        raise ConfigError(f"dataset {params['dataset']} has no test labels")
    clean = clf.predict(x) == y
    test_acc = float(clean.float().mean())
    noisy = None
    if params.get("noise_sigma") is not None:
        gen = torch.Generator().manual_seed(params["seed"] + 2)
        noise = params["noise_sigma"] * torch.randn(x.shape, generator=gen)
        noisy = float((clf.predict(x + noise) == y).float().mean())
    if not params["adversarial"]:
        return test_acc, noisy, None, None
    module = clf.module
    if not isinstance(module, nn.Module):
        raise ModelError("the trained classifier lost its module")
    steps = params["eval_steps"]
    attack = PGD(steps=steps)
    threat = ThreatModel("linf", params["eps"])
    gen = torch.Generator().manual_seed(params["seed"] + 2)
    robust = torch.zeros_like(clean)
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        for i in range(0, len(test), 500):
            xa = attack(clf, x[i : i + 500], y[i : i + 500], threat, generator=gen)
            robust[i : i + 500] = clf.predict(xa) == y[i : i + 500]
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    robust_acc = float((robust & clean).float().mean())
    evaluation: dict[str, object] = {
        "attack": attack.to_dict(),
        "step_size": 2.5 * params["eps"] / steps,
        "threat": threat.to_dict(),
        "split": "test",
        "n": len(test),
        "seed": params["seed"] + 2,
    }
    return test_acc, noisy, robust_acc, evaluation


# -- files ----------------------------------------------------------------------------------


def _save_weights(module: nn.Module, path: Path, params: dict[str, Any]) -> str:
    """Atomically write the weights as safetensors; return their SHA-256."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(state, str(tmp), metadata={"factory": FACTORY_PREFIX + params["arch"]})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return file_sha256(path)


def _reuse(model_path: Path, side_path: Path, params: dict[str, Any]) -> TrainResult | None:
    if not (model_path.is_file() and side_path.is_file()):
        return None
    try:
        meta = read_sidecar(model_path)
    except ModelError:
        return None
    if meta.get("training") != params or meta.get("sha256") != file_sha256(model_path):
        return None
    test_acc = meta.get("test_accuracy")
    robust = meta.get("robust_accuracy")
    if not isinstance(test_acc, float) or not (robust is None or isinstance(robust, float)):
        return None
    return TrainResult(
        model_path=model_path,
        sidecar_path=side_path,
        test_accuracy=test_acc,
        robust_accuracy=robust,
        seconds=float(meta.get("seconds", 0.0)),
        epochs=int(params["epochs"]),
        reused=True,
    )


def load_reference(path: Path | str) -> Classifier:
    """Rebuild a zoo model from its safetensors file and sidecar (no general loader needed)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no model file {path}; train it first with aegis.zoo.train_reference")
    meta = read_sidecar(path)
    factory = meta.get("factory")
    if not isinstance(factory, str) or not factory.startswith(FACTORY_PREFIX):
        raise ModelError(
            f"{path} has no zoo sidecar (factory {factory!r}); load it with "
            "aegis.io.models.load_classifier instead"
        )
    arch = factory[len(FACTORY_PREFIX) :]
    if arch not in ARCHITECTURES:
        raise ModelError(
            f"{path} names unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)}"
        )
    kwargs = meta.get("factory_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ModelError(f"sidecar of {path} has factory_kwargs that are not an object; fix it")
    try:
        module = ARCHITECTURES[arch](**kwargs)
        module.load_state_dict(load_file(str(path)))
        info = ModelInfo(
            num_classes=int(meta["num_classes"]),
            input_shape=_triple(meta["input_shape"]),
            bounds=(float(meta.get("bounds", [0, 1])[0]), float(meta.get("bounds", [0, 1])[1])),
            mean=None if meta.get("mean") is None else tuple(meta["mean"]),
            std=None if meta.get("std") is None else tuple(meta["std"]),
            layout=str(meta.get("layout", "NCHW")),
        )
    except (KeyError, TypeError, ValueError, RuntimeError, OSError, SafetensorError) as exc:
        raise ModelError(
            f"cannot rebuild {path} from its sidecar ({exc}); retrain it with force=True"
        ) from exc
    module.eval()
    return Classifier(
        module,
        info,
        name=path.stem,
        source=str(path),
        provenance={k: "sidecar" for k in METADATA_KEYS if k in meta},
    )


def _triple(value: Any) -> tuple[int, int, int]:
    c, h, w = (int(v) for v in value)
    return (c, h, w)
