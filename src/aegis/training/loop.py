"""The one seeded training loop: standard, soft-target, noise-augmented or robust training
(every robust-training defense plugs in its crafting and its loss), resumable per epoch.

Deterministic for a seed (on one machine and thread count): shuffling and augmentation draw
from one generator, the crafting attacks from another, and after every epoch the weights,
optimizer, schedule and the three RNG states go to the checkpoint; resuming ends with the same
weights, bit for bit, as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aegis.errors import ConfigError, DataError
from aegis.model import Classifier, ModelInfo
from aegis.progress import progress_bar
from aegis.threat import ThreatModel
from aegis.training.checkpoint import (
    CHECKPOINT_VERSION,
    load_checkpoint,
    params_hash,
    save_checkpoint,
)
from aegis.training.schedule import SCHEDULES, make_optimizer, make_scheduler

log = logging.getLogger(__name__)

SaveFn = Callable[[Path, dict[str, Any]], None]
"""Writes a checkpoint: (path, state)."""
SchedulerFn = Callable[
    [torch.optim.Optimizer, str, float, int], torch.optim.lr_scheduler.LRScheduler
]
"""Makes the LR schedule: (optimizer, schedule name, peak lr, total steps)."""


class Crafting(Protocol):
    """What the loop needs of a robust-training defense (``aegis.defenses.training``)."""

    @property
    def registry_name(self) -> str: ...

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
    ) -> Tensor: ...

    def loss(
        self, module: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor
    ) -> tuple[Tensor, Tensor]: ...


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """The loop's hyper-parameters, typed (read from a run's recorded hyper-parameters)."""

    arch: str
    seed: int
    epochs: int
    batch_size: int
    optimizer: str
    schedule: str
    lr: float
    weight_decay: float | None  # None: the optimizer's default
    grad_clip: float | None
    augment_shift: int
    noise_sigma: float | None
    eps: float
    eps_ramp: float
    attack_steps: int
    attack_step_size: float | None
    attack_early_stop: bool

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> LoopSettings:
        return cls(
            arch=params["arch"],
            seed=params["seed"],
            epochs=params["epochs"],
            batch_size=params["batch_size"],
            optimizer=params["optimizer"],
            schedule=params["schedule"],
            lr=params["lr"],
            weight_decay=params.get("weight_decay"),
            grad_clip=params.get("grad_clip"),
            augment_shift=params["augment_shift"],
            noise_sigma=params.get("noise_sigma"),
            eps=params.get("eps", 0.0),
            eps_ramp=params.get("eps_ramp", 0.0),
            attack_steps=params.get("attack_steps", 1),
            attack_step_size=params.get("attack_step_size"),
            attack_early_stop=params.get("attack_early_stop", False),
        )


@dataclass(frozen=True)
class LoopResult:
    """The trained (unfrozen, eval-mode) Classifier and how the run went."""

    classifier: Classifier
    resumed_from_epoch: int  # finished epochs read back from a checkpoint (0: fresh run)
    seconds_before: float  # time spent in earlier, interrupted runs of the loop
    train_seconds: float  # the loop only, all runs together


class _Run:
    """The mutable state of one run: module, optimizer, schedule, generators, step count."""

    def __init__(
        self,
        module: nn.Module,
        info: ModelInfo,
        s: LoopSettings,
        total: int,
        digest: str,
        scheduler: SchedulerFn,
    ) -> None:
        self.module, self.s, self.digest = module, s, digest
        self.shuffle = torch.Generator().manual_seed(s.seed)
        self.attack_gen = torch.Generator().manual_seed(s.seed + 1)
        self.opt = make_optimizer(module.parameters(), s.optimizer, s.lr, s.weight_decay)
        self.sched = scheduler(self.opt, s.schedule, s.lr, total)
        self.clf = Classifier(module, info, freeze=False, name=s.arch)
        self.step, self.first_epoch, self.seconds_before = 0, 0, 0.0

    def restore(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_global"])
        self.shuffle.set_state(state["rng_shuffle"])
        self.attack_gen.set_state(state["rng_attack"])
        self.first_epoch, self.step = int(state["epoch"]), int(state["step"])
        self.seconds_before = float(state["seconds"])

    def state(self, epoch: int, seconds: float) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "params_hash": self.digest,
            "epoch": epoch,
            "step": self.step,
            "seconds": seconds,
            "model": self.module.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng_global": torch.get_rng_state(),
            "rng_shuffle": self.shuffle.get_state(),
            "rng_attack": self.attack_gen.get_state(),
        }


def train_loop(
    module: nn.Module,
    info: ModelInfo,
    x: Tensor,
    y: Tensor,
    params: dict[str, Any],
    strategy: Crafting | None,
    ckpt_path: Path | None,
    *,
    resume: bool,
    progress: bool,
    soft: Tensor | None = None,
    save: SaveFn = save_checkpoint,
    scheduler: SchedulerFn = make_scheduler,
) -> LoopResult:
    """The one training loop: every defense plugs in its crafting and its loss. ``params`` are
    the run's recorded hyper-parameters (their hash keys the checkpoint). ``soft`` (n, k), rows
    summing to 1: targets of a soft cross-entropy −Σ soft · log softmax(logits) in place of the
    labels' cross-entropy (standard training only; ``y`` then only scores the accuracy).
    ``save`` writes a checkpoint and ``scheduler`` makes the LR schedule (the defaults; a
    caller may pass its own, e.g. to observe or interrupt a run)."""
    s = LoopSettings.from_params(params)
    n, bs = x.shape[0], s.batch_size
    batches = (n + bs - 1) // bs
    total = s.epochs * batches
    run = _Run(module, info, s, total, params_hash(params), scheduler)
    ramp_steps = s.eps_ramp * total if strategy is not None else 0.0
    state = load_checkpoint(ckpt_path, run.digest) if resume and ckpt_path is not None else None
    if state is not None:
        run.restore(state)
        log.info("resuming %s after epoch %d/%d", ckpt_path, run.first_epoch, s.epochs)
    run_start = time.perf_counter()
    with progress_bar(enabled=progress, transient=False, status=True) as bar:
        label = f"train {s.arch}" + (f" {strategy.registry_name}" if strategy else "")
        task = bar.add_task(label, total=total, completed=run.first_epoch * batches, status="")
        for epoch in range(run.first_epoch, s.epochs):
            perm = torch.randperm(n, generator=run.shuffle)
            loss_sum, correct = 0.0, 0
            eps_now = 0.0
            for b in range(batches):
                idx = perm[b * bs : (b + 1) * bs]
                if strategy is not None:
                    eps_now = s.eps * (min(1.0, (run.step + 1) / ramp_steps) if ramp_steps else 1.0)
                loss, logits = _step(run, x[idx], y[idx], strategy, eps_now, soft, idx)
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.detach().argmax(1) == y[idx]).sum())
                status = f"epoch {epoch + 1}/{s.epochs} loss {loss_sum / min(n, (b + 1) * bs):.3f}"
                if strategy is not None:
                    status += f" eps {eps_now:.3f}"
                bar.update(task, advance=1, status=status)
            kind = "adversarial" if strategy is not None else "train"
            args = (epoch + 1, s.epochs, loss_sum / n, kind, correct / n)
            log.info("epoch %d/%d: loss %.4f, %s accuracy %.4f", *args)
            if ckpt_path is not None:
                seconds = run.seconds_before + time.perf_counter() - run_start
                save(ckpt_path, run.state(epoch + 1, seconds))
    train_seconds = run.seconds_before + time.perf_counter() - run_start
    module.eval()
    return LoopResult(run.clf, run.first_epoch, run.seconds_before, train_seconds)


def _step(
    run: _Run,
    xb: Tensor,
    yb: Tensor,
    strategy: Crafting | None,
    eps_now: float,
    soft: Tensor | None,
    idx: Tensor,
) -> tuple[Tensor, Tensor]:
    """One optimizer step on one batch (augmented as the settings say); its loss and logits."""
    s, module = run.s, run.module
    if s.augment_shift:
        xb = random_shift(xb, s.augment_shift, run.shuffle)
    if s.noise_sigma:  # Gaussian augmentation, not clipped (Cohen et al.)
        xb = xb + s.noise_sigma * torch.randn(xb.shape, generator=run.shuffle)
    if strategy is None:
        module.train()
        logits = module(xb)
        if soft is None:
            loss = F.cross_entropy(logits, yb)
        else:
            loss = -(soft[idx] * F.log_softmax(logits, 1)).sum(1).mean()
    else:
        x_adv = _craft(run, strategy, xb, yb, eps_now)
        module.train()
        loss, logits = strategy.loss(module, xb, x_adv, yb)
    run.opt.zero_grad(set_to_none=True)
    torch.autograd.backward(loss)
    if s.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(module.parameters(), s.grad_clip)
    run.opt.step()
    run.sched.step()
    run.step += 1
    return loss, logits


def _craft(run: _Run, strategy: Crafting, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """The defense's training inputs against the current weights (eval mode, input gradients
    only: the weights are frozen while the attack runs)."""
    if eps <= 0:
        return x
    module, s = run.module, run.s
    module.eval()
    with frozen_weights(module):
        try:
            return strategy.craft(
                run.clf,
                x,
                y,
                ThreatModel("linf", eps),
                steps=s.attack_steps,
                step_size=s.attack_step_size,
                early_stop=s.attack_early_stop,
                generator=run.attack_gen,
            )
        finally:
            module.train()


@contextmanager
def frozen_weights(module: nn.Module) -> Iterator[None]:
    """Turn off the weights' gradients (input gradients only), restoring each flag after."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)  # input gradients only: the backward skips weight gradients
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


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


def soft_targets_of(scores: Tensor, n: int, k: int) -> Tensor:
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


def validate_params(params: dict[str, Any]) -> None:
    """Check a run's recorded hyper-parameters before anything is trained."""
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
