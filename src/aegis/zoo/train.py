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

The loop itself is :func:`aegis.training.train_loop`; the recipes are :mod:`aegis.zoo.recipes`,
the files :mod:`aegis.zoo.files` and the scoring :mod:`aegis.zoo.evaluation`; this module
keeps the public names of all of them.

Runs are resumable: after every epoch the weights, optimizer and schedule, the three RNG states,
the epoch and a hash of the hyper-parameters go to ``<model>.ckpt.pt`` beside the output
(tensors and primitive types only, loaded with ``weights_only=True``). Rerunning the same call
resumes from the last finished epoch and ends with the same weights, bit for bit, as an
uninterrupted run; a checkpoint with other hyper-parameters is ignored. The checkpoint is deleted
once the model and its sidecar are written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aegis.defenses.training import (
    TrainingDefense,
    create_training_defense,
    get_training_spec,
)
from aegis.errors import ConfigError
from aegis.io.data import BUILTINS, load_dataset
from aegis.io.sidecar import write_sidecar
from aegis.model import Classifier, ModelInfo
from aegis.training import (
    CHECKPOINT_VERSION,
    FORMAT_VERSION,
    SCHEDULES,
    SGD_WEIGHT_DECAY,
    LoopResult,
    RobustTraining,
    random_shift,
    seeded,
    train_loop,
    validate_params,
)
from aegis.training import load_checkpoint as _load_checkpoint
from aegis.training import make_scheduler as _scheduler
from aegis.training import save_checkpoint as _save_checkpoint
from aegis.training import train_classifier as training_classifier
from aegis.training import triangle as _triangle
from aegis.zoo.architectures import ARCHITECTURES, DATASET_ARCH
from aegis.zoo.evaluation import evaluate_reference as _evaluate
from aegis.zoo.files import FACTORY_PREFIX, TrainResult, load_reference, reuse, save_weights
from aegis.zoo.recipes import (
    RECIPES,
    TRAIN_SETTINGS,
    Recipe,
    apply_train_settings,
    check_crafting,
)

__all__ = [  # the public names, and those other packages and tests read from here
    "ADVERSARIAL",
    "CHECKPOINT_VERSION",
    "FACTORY_PREFIX",
    "FORMAT_VERSION",
    "RECIPES",
    "SCHEDULES",
    "SGD_WEIGHT_DECAY",
    "TRAIN_SETTINGS",
    "Recipe",
    "RobustTraining",
    "TrainResult",
    "_load_checkpoint",
    "_save_checkpoint",
    "_scheduler",
    "_triangle",
    "checkpoint_path",
    "load_reference",
    "model_filename",
    "random_shift",
    "resolve_defense",
    "train_classifier",
    "train_reference",
    "validate_params",
]

log = logging.getLogger(__name__)

ADVERSARIAL = ("pgd",)
"""Values of the older ``adversarial`` argument: ``"pgd"`` is ``defense="pgd-at"``."""


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
    recipe, name, strategy = _recipe_and_defense(dataset, defense, adversarial, defense_params)
    params = _reference_params(dataset, recipe, name, strategy, epochs=epochs, eps=eps, seed=seed,
        batch_size=batch_size, lr=lr, augment_shift=augment_shift, attack_steps=attack_steps,
        attack_step_size=attack_step_size, eps_ramp=eps_ramp, attack_early_stop=attack_early_stop,
        eval_steps=eval_steps, optimizer=optimizer, noise_sigma=noise_sigma)  # fmt: skip
    model_path = Path(out_dir) / model_filename(dataset, name, noise_sigma)
    if not force:
        reused = reuse(model_path, model_path.with_suffix(".json"), params)
        if reused is not None:
            log.info("reusing %s (same hyper-parameters; force=True retrains)", model_path)
            return reused
    return _train_and_write(model_path, params, strategy, name, resume=resume, progress=progress)


def _recipe_and_defense(
    dataset: str, defense: str | None, adversarial: str | None, params: dict[str, Any] | None
) -> tuple[Recipe, str | None, TrainingDefense | None]:
    """The dataset's recipe, the defense's name and its strategy: the recipe's parameters for
    the defense, overridden by the values set in ``params``."""
    recipe = RECIPES.get(dataset)
    if recipe is None or dataset not in DATASET_ARCH:
        raise ConfigError(
            f"no reference model for dataset {dataset!r}; use one of {', '.join(DATASET_ARCH)}"
        )
    name = resolve_defense(defense, adversarial)
    if name is None and params:
        raise ConfigError("defense_params need a defense; pass defense='trades' (or another)")
    own = {k: v for k, v in (params or {}).items() if v is not None}
    strategy = (
        None
        if name is None
        else create_training_defense(name, **{**recipe.params_for(name), **own})
    )
    return recipe, name, strategy


def _train_and_write(
    model_path: Path,
    params: dict[str, Any],
    strategy: TrainingDefense | None,
    name: str | None,
    *,
    resume: bool,
    progress: bool,
) -> TrainResult:
    """Train (resuming from the checkpoint beside ``model_path``), score, and write the model
    and its sidecar; the checkpoint is deleted once both are written."""
    model_path.parent.mkdir(parents=True, exist_ok=True)
    ckpt_path = checkpoint_path(model_path)
    start = time.perf_counter()
    with seeded(params["seed"]):
        module, info = _build(params)
        fit = _fit(module, info, params, strategy, ckpt_path, resume=resume, progress=progress)
    seconds = fit.seconds_before + time.perf_counter() - start

    _write_model(module, info, model_path, params, fit, strategy, seconds)
    ckpt_path.unlink(missing_ok=True)  # the model and sidecar are written: nothing to resume
    log.info(
        "trained %s in %.1f s: test accuracy %.4f%s",
        model_path.name,
        seconds,
        fit.test_accuracy,
        ""
        if fit.robust_accuracy is None
        else f", PGD robust accuracy {fit.robust_accuracy:.4f} at eps {params['eps']}",
    )
    return TrainResult(
        model_path,
        model_path.with_suffix(".json"),
        fit.test_accuracy,
        fit.robust_accuracy,
        seconds,
        params["epochs"],
        defense=name,
        resumed_from_epoch=fit.resumed_from_epoch,
        noisy_test_accuracy=fit.noisy_accuracy,
    )


def _write_model(
    module: nn.Module,
    info: ModelInfo,
    model_path: Path,
    params: dict[str, Any],
    fit: _Fit,
    strategy: TrainingDefense | None,
    seconds: float,
) -> None:
    """Write the weights and their sidecar (what was trained, how, and how good it is)."""
    digest = save_weights(module, model_path, params)
    spec = None if strategy is None else get_training_spec(strategy.registry_name)
    write_sidecar(
        model_path,
        info,
        factory=FACTORY_PREFIX + params["arch"],
        factory_kwargs=params["factory_kwargs"],
        dataset=params["dataset"],
        split="train",
        evaluated_on="test",
        seed=params["seed"],
        epochs=params["epochs"],
        test_accuracy=fit.test_accuracy,
        robust_accuracy=fit.robust_accuracy,
        robust_eval=fit.robust_eval,
        noisy_test_accuracy=fit.noisy_accuracy,
        defense=None
        if spec is None or strategy is None
        else {
            "name": spec.name,
            "paper": spec.paper,
            "eps": params["eps"],
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


def _reference_params(
    dataset: str,
    recipe: Recipe,
    name: str | None,
    strategy: TrainingDefense | None,
    *,
    epochs: int | None,
    eps: float,
    seed: int,
    batch_size: int,
    lr: float | None,
    augment_shift: int | None,
    attack_steps: int | None,
    attack_step_size: float | None,
    eps_ramp: float | None,
    attack_early_stop: bool,
    eval_steps: int,
    optimizer: str | None,
    noise_sigma: float | None,
) -> dict[str, Any]:
    """The (validated) hyper-parameters of a reference run: the arguments given, the recipe's
    defaults for the rest (they key the checkpoint and the reuse, and go to the sidecar)."""
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
    apply_train_settings(params, recipe.train_for(name))
    if noise_sigma is not None:  # only when set: the hyper-parameters of older models stand
        if name is not None:
            raise ConfigError(
                "noise_sigma trains the base model of randomized smoothing; it does not "
                f"combine with a defense ({name}): drop one of them"
            )
        params["noise_sigma"] = noise_sigma
    if strategy is not None:
        check_crafting(strategy, attack_steps, attack_step_size, attack_early_stop)
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
    validate_params(params)
    return params


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
    fit = _train_loop(
        module, info, x, y, params, strategy, ckpt_path, resume=resume, progress=progress
    )
    test_acc, noisy, robust_acc, robust_eval = _evaluate(fit.classifier, params)
    return _Fit(
        test_acc,
        robust_acc,
        robust_eval,
        fit.resumed_from_epoch,
        fit.seconds_before,
        fit.train_seconds,
        noisy,
    )


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
) -> LoopResult:
    """:func:`aegis.training.train_loop`, with this module's checkpoint writer and scheduler
    (looked up at call time, so a test can observe or interrupt a run through them)."""
    return train_loop(
        module,
        info,
        x,
        y,
        params,
        strategy,
        ckpt_path,
        resume=resume,
        progress=progress,
        soft=soft,
        save=_save_checkpoint,
        scheduler=_scheduler,
    )


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
    name = resolve_defense(defense, None)
    robust = None
    if name is not None:
        strategy = create_training_defense(name)
        robust = RobustTraining(
            name=name,
            strategy=strategy,
            crafting=strategy.crafting,
            eps=eps,
            attack_steps=RECIPES["mnist"].attack_steps if strategy.iterative else 1,
            eps_ramp=RECIPES["mnist"].eps_ramp,
        )
    return training_classifier(
        x,
        y,
        arch=arch,
        num_classes=num_classes,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        augment_shift=augment_shift,
        weight_decay=weight_decay,
        robust=robust,
        checkpoint=checkpoint,
        progress=progress,
        soft_targets=soft_targets,
    )
