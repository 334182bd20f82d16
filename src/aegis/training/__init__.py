"""The one seeded training loop with checkpoint/resume, and ``train_classifier`` on in-memory
data (below defenses, poisoning, leakage and
the zoo, which bring the architectures, recipes and robust-training strategies)."""

from aegis.training.checkpoint import (
    CHECKPOINT_VERSION,
    load_checkpoint,
    params_hash,
    save_checkpoint,
)
from aegis.training.classifier import (
    FORMAT_VERSION,
    RobustTraining,
    train_classifier,
)
from aegis.training.loop import (
    Crafting,
    LoopResult,
    LoopSettings,
    frozen_weights,
    random_shift,
    soft_targets_of,
    train_loop,
    validate_params,
)
from aegis.training.schedule import (
    SCHEDULES,
    SGD_WEIGHT_DECAY,
    make_optimizer,
    make_scheduler,
    seeded,
    triangle,
)

__all__ = [
    "CHECKPOINT_VERSION",
    "FORMAT_VERSION",
    "SCHEDULES",
    "SGD_WEIGHT_DECAY",
    "Crafting",
    "LoopResult",
    "LoopSettings",
    "RobustTraining",
    "frozen_weights",
    "load_checkpoint",
    "make_optimizer",
    "make_scheduler",
    "params_hash",
    "random_shift",
    "save_checkpoint",
    "seeded",
    "soft_targets_of",
    "train_classifier",
    "train_loop",
    "triangle",
    "validate_params",
]
