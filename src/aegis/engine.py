"""The one loop over data: batches → attack → re-prediction → per-sample records.

By default only points that are correctly classified (and, for targeted attacks, whose true label
is not the target) are attacked. Success is decided here, by predicting again on what the attack
returned; the budget and box of every returned input are audited before a record is written.

The batches run on an executor (:mod:`aegis.executors`): in this process (``local``, the default)
or on Ray workers (``ray``). Each batch is a ``Batch`` of inputs run by a ``BatchWork`` (the
attacks, the threat, the seed) with its own seed, so a batch attacked anywhere, in any order,
gives the same result; the records are put back in batch order here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aegis._alloc import keep_freed_memory
from aegis.atomic import atomic, write_error
from aegis.attacks.base import EVALUATE_WORDING, Attack, check_batch
from aegis.errors import AegisError, ConfigError, DataError
from aegis.executors import Executor, create_executor
from aegis.executors.batches import Batch, BatchWork
from aegis.executors.memory import plan_batch
from aegis.model import FROZEN_MIN_POINTS, Classifier
from aegis.records import Records
from aegis.threat import ThreatModel, norms

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]


@dataclass
class Evaluation:
    """What ``evaluate`` returns: the records, the adversarial inputs and how they were made."""

    records: Records
    x_adv: np.ndarray
    config: dict[str, Any]
    seconds: float
    warnings: list[str] = field(default_factory=list)


def resolve_targets(
    targets: int | np.ndarray | Tensor | None, n: int, num_classes: int
) -> np.ndarray | None:
    """One target for all inputs, one per input, or None (untargeted)."""
    if targets is None:
        return None
    arr = np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets)
    if arr.ndim == 0:
        arr = np.full(n, int(arr), dtype=np.int64)
    if arr.shape != (n,):
        raise DataError(f"targets must be one class or one per input ({n}), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"targets must be integer classes, got dtype {arr.dtype}")
    if n and (arr.min() < 0 or arr.max() >= num_classes):
        raise ConfigError(
            f"target class must be in [0, {num_classes - 1}] for this {num_classes}-class model, "
            f"got {int(arr.max()) if arr.max() >= num_classes else int(arr.min())}"
        )
    return arr.astype(np.int64)


def batch_seed(seed: int, start: int) -> int:
    """A per-batch seed that depends only on the run seed and the batch's first index."""
    return int(np.random.SeedSequence([seed, start]).generate_state(1, dtype=np.uint64)[0] >> 1)


def evaluate(
    model: Classifier,
    x: np.ndarray | Tensor,
    y: np.ndarray | Tensor,
    attack: Attack | Sequence[Attack],
    threat: ThreatModel,
    *,
    targets: int | np.ndarray | Tensor | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    attack_misclassified: bool = False,
    progress: ProgressFn | None = None,
    checkpoint: Path | str | None = None,
    executor: Executor | str = "local",
) -> Evaluation:
    """Attack ``x`` in batches and record, per sample, predictions, success, norms and calls.

    Args:
        attack: one attack, or an ensemble run in order; each member runs only on the points
            every earlier member failed on, and each point keeps its first success
            (``Records.attack_index`` names the member). An ensemble of minimal-norm attacks
            instead runs every member on every point and keeps each point's smallest
            successful perturbation (in ``threat.norm``).
        targets: None (untargeted), one class for every input, or one class per input.
        attack_misclassified: also attack points the model already gets wrong.
        progress: called with the number of samples finished after every batch (batches
            may finish out of order on a parallel executor; the count only grows).
        checkpoint: a folder where each finished batch is written atomically (records and
            adversarial inputs) as soon as it finishes; a batch already there for the same
            model, data and settings is read back instead of attacked again. Every batch
            draws from its own seed (``batch_seed``), so a run killed at any moment and
            started again with the same folder gives the records of an uninterrupted run
            (timings aside), on either executor.
        executor: where the batches run: ``"local"`` (this process, the default), ``"ray"``
            (Ray workers with the default settings) or an :class:`aegis.executors.Executor`
            such as ``RayExecutor(workers=4)``. The records are the same on every executor
            (timings aside); ``config["executor"]`` says which one ran.
    """
    runner = executor if isinstance(executor, Executor) else create_executor(executor)
    xt, yt, attacks, tgt, threat = _checked(model, x, y, attack, threat, targets, batch_size)
    n = xt.shape[0]
    if model.device.type == "cpu":
        keep_freed_memory()
    folder = None if checkpoint is None else Path(checkpoint)
    plan = plan_batch(
        model,
        xt,
        attacks,
        targeted=threat.targeted,
        given=batch_size,
        resumed=None if folder is None else _BatchStore.started_with(folder),
    )
    bs = plan.size
    warmup = None
    if n >= FROZEN_MIN_POINTS:
        # Decided before the first attack call, so the whole run takes one path.
        warmup = xt[:bs].to(model.device, torch.float32)
        model.prepare_frozen(warmup)

    config = _config(attacks, threat, tgt, n, bs, seed, attack_misclassified)
    store = None if folder is None else _BatchStore(folder, model, xt, yt, tgt, config)
    start_all = time.perf_counter()
    work = BatchWork(tuple(attacks), threat, seed, attack_misclassified, _run_batch)
    finished, retries = _run(runner, model, work, xt, yt, tgt, bs, store, warmup, progress)
    order = sorted(finished)
    records = Records.concat([finished[s][0] for s in order])
    x_adv = (
        np.concatenate([finished[s][1] for s in order])
        if order
        else np.zeros((0, *model.input_shape), np.float32)
    )
    config["executor"] = runner.describe()
    config["batching"] = {**plan.to_dict(), "retries": retries}
    return Evaluation(records, x_adv, config, time.perf_counter() - start_all)


def _checked(
    model: Classifier,
    x: np.ndarray | Tensor,
    y: np.ndarray | Tensor,
    attack: Attack | Sequence[Attack],
    threat: ThreatModel,
    targets: int | np.ndarray | Tensor | None,
    batch_size: int | None,
) -> tuple[Tensor, Tensor, list[Attack], np.ndarray | None, ThreatModel]:
    """``evaluate``'s arguments checked: the inputs and labels as tensors, the attacks as a
    list, the targets resolved, and the threat targeted exactly when there are targets."""
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y).long()
    check_batch(model, xt, yt, None, wording=EVALUATE_WORDING)
    attacks = [attack] if isinstance(attack, Attack) else list(attack)
    if not attacks:
        raise ConfigError("an ensemble needs at least one attack")
    tgt = resolve_targets(targets, xt.shape[0], model.num_classes)
    if (tgt is not None) != threat.targeted:
        threat = ThreatModel(threat.norm, threat.eps, targeted=tgt is not None)
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    return xt, yt, attacks, tgt, threat


def _run(
    runner: Executor,
    model: Classifier,
    work: BatchWork,
    xt: Tensor,
    yt: Tensor,
    tgt: np.ndarray | None,
    bs: int,
    store: _BatchStore | None,
    warmup: Tensor | None,
    progress: ProgressFn | None,
) -> tuple[dict[int, tuple[Records, np.ndarray]], list[dict[str, int]]]:
    """Every batch's records and adversarial inputs by first index (read back from ``store``
    or attacked on ``runner``, each saved as it finishes), and the out-of-memory retries."""
    finished: dict[int, tuple[Records, np.ndarray]] = {}
    pending: list[Batch] = []
    retries: list[dict[str, int]] = []
    done = 0
    for start in range(0, xt.shape[0], bs):
        saved = None if store is None else store.load(start)
        if saved is None:
            tb = None if tgt is None else torch.from_numpy(tgt[start : start + bs])
            pending.append(Batch(start, xt[start : start + bs], yt[start : start + bs], tb))
            continue
        finished[start] = saved
        done += len(saved[0])
        if progress is not None:
            progress(done)
    for batch in runner.run(model, work, pending, warmup=warmup):
        finished[batch.start] = (batch.records, batch.x_adv)
        retries.extend(batch.retries)
        if store is not None:
            store.save(batch.start, batch.records, batch.x_adv)
        done += len(batch.records)
        if progress is not None:
            progress(done)
    return finished, sorted(retries, key=lambda r: (r["start"], -r["size"]))


def _config(
    attacks: list[Attack],
    threat: ThreatModel,
    tgt: np.ndarray | None,
    n: int,
    bs: int,
    seed: int,
    attack_misclassified: bool,
) -> dict[str, Any]:
    return {
        "attack": (
            attacks[0].to_dict()
            if len(attacks) == 1
            else {
                "name": "+".join(a.registry_name for a in attacks),
                "members": [a.to_dict() for a in attacks],
            }
        ),
        "threat": threat.to_dict(),
        "targets": None
        if tgt is None
        else (int(tgt[0]) if n and (tgt == tgt[0]).all() else "per-input"),
        "batch_size": bs,
        "seed": seed,
        "attack_misclassified": attack_misclassified,
    }


_SIZING = "batching.json"
"""The batch size a checkpointed run started with, so a resumed run sizes its batches alike."""


class _BatchStore:
    """Finished batches of one evaluation, one ``.npz`` per batch in a folder, each written
    to a temporary name and renamed (a kill leaves either the whole batch or none of it).
    Batches are keyed by a digest of the model's weights, the data and the settings."""

    def __init__(
        self,
        folder: Path,
        model: Classifier,
        x: Tensor,
        y: Tensor,
        tgt: np.ndarray | None,
        config: dict[str, Any],
    ) -> None:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"checkpoint {folder} is a file; give a folder for the batches")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(folder, exc) from exc
        self.folder = folder
        sizing = folder / _SIZING
        if not sizing.is_file():
            with atomic(sizing) as tmp:
                tmp.write_text(json.dumps({"batch_size": config["batch_size"]}))
        h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
        h.update(_model_digest(model).encode())
        for arr in (x.numpy(), y.numpy(), np.zeros(0) if tgt is None else tgt):
            h.update(np.ascontiguousarray(arr).tobytes())
        self.key = h.hexdigest()[:32]

    @staticmethod
    def started_with(folder: Path) -> int | None:
        """The batch size a checkpointed run in ``folder`` started with (None: none did, or
        it finished no batch)."""
        if not any(folder.glob("batch-*.npz")):
            return None
        try:
            size = json.loads((folder / _SIZING).read_text(encoding="utf-8"))["batch_size"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None

    def _path(self, start: int) -> Path:
        return self.folder / f"batch-{start:09d}-{self.key}.npz"

    def load(self, start: int) -> tuple[Records, np.ndarray] | None:
        path = self._path(start)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                rec = Records(**{f.name: data[f.name] for f in fields(Records)})
                return rec, data["x_adv"]
        except (OSError, ValueError, KeyError) as exc:  # a damaged file: attack it again
            log.warning("checkpoint %s unreadable (%s); attacking that batch again", path, exc)
            return None

    def save(self, start: int, rec: Records, x_adv: np.ndarray) -> None:
        with atomic(self._path(start)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, x_adv=x_adv, **{f.name: getattr(rec, f.name) for f in fields(Records)})
            fh.flush()
            os.fsync(fh.fileno())


def _model_digest(model: Classifier) -> str:
    """What identifies the model of a checkpoint: its file's bytes (``provenance["sha256"]``,
    every loaded model kind, query-only ones included), its metadata and preprocessing, and
    the weights a module holds now (an in-memory model has no file)."""
    described = model.describe()
    h = hashlib.sha256()
    for key in ("provenance", "preprocess"):
        h.update(json.dumps(described.get(key), sort_keys=True, default=str).encode())
    h.update(json.dumps(model.info.to_dict(), sort_keys=True, default=str).encode())
    module = model.module
    if isinstance(module, torch.nn.Module):
        for name, t in module.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    elif "sha256" not in model.provenance:
        # A Python callable with no file: nothing to hash but what it is called.
        fn = model.query_fn
        h.update(f"{model.name}:{getattr(fn, '__qualname__', type(fn).__name__)}".encode())
    return h.hexdigest()


def _run_batch(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    targets: Tensor | None,
    attacks: list[Attack],
    threat: ThreatModel,
    seed: int,
    start: int,
    attack_misclassified: bool,
) -> tuple[Records, Tensor]:
    m = x.shape[0]
    model.reseed(batch_seed(seed, start))  # a random defense draws afresh in every batch
    with model.counting(m) as counter:
        clean_pred = model.logits(x).argmax(1)
    forward = counter.forward.copy()
    gradient = counter.gradient.copy()
    eligible = torch.ones(m, dtype=torch.bool, device=x.device) if targets is None else y != targets
    mask = eligible if attack_misclassified else eligible & (clean_pred == y)
    x_adv = x.clone()
    adv_pred = clean_pred.clone()
    by = torch.full((m,), -1, dtype=torch.long, device=x.device)
    idx = mask.nonzero().squeeze(1)
    generator = torch.Generator(device=x.device).manual_seed(batch_seed(seed, start))
    # An ensemble of minimal-norm attacks keeps, per point, the smallest successful
    # perturbation of any member (each runs on every point); any other ensemble runs each
    # member only on the points every earlier one failed on, and keeps the first success.
    smallest = len(attacks) > 1 and all(a.minimal for a in attacks)
    best = torch.full((m,), float("inf"), device=x.device)
    for number, attack in enumerate(attacks):
        if not smallest:
            idx = idx[by[idx] < 0]
        if idx.numel() == 0:
            break
        sub_t = None if targets is None else targets[idx]
        with model.counting(idx.numel()) as sub:
            out = attack(model, x[idx], y[idx], threat, targets=sub_t, generator=generator)
            pred = model.logits(out).argmax(1)
        _audit(out, x[idx], threat, model.bounds, attack)
        won = (pred == sub_t) if sub_t is not None else (pred != y[idx])
        if smallest:
            size = norms(out - x[idx], threat.norm)
            better = won & (size < best[idx])
            keep = idx[better]
            x_adv[keep] = out[better]
            adv_pred[keep] = pred[better]
            best[keep] = size[better]
            by[keep] = number
        else:
            # The first success is kept; a failed point keeps the last attack's output.
            x_adv[idx] = out
            adv_pred[idx] = pred
            by[idx[won]] = number
        rows = idx.cpu().numpy()
        forward[rows] += sub.forward
        gradient[rows] += sub.gradient
    delta = x_adv - x
    success = mask & ((adv_pred == targets) if targets is not None else (adv_pred != y))
    rec = Records(
        index=np.zeros(m, np.int64),
        y=y.cpu().numpy(),
        target=(targets.cpu().numpy() if targets is not None else np.full(m, -1, np.int64)),
        clean_pred=clean_pred.cpu().numpy(),
        adv_pred=adv_pred.cpu().numpy(),
        eligible=eligible.cpu().numpy(),
        attacked=mask.cpu().numpy(),
        success=success.cpu().numpy(),
        attack_index=by.cpu().numpy(),
        l0=norms(delta, "l0").cpu().double().numpy(),
        l1=norms(delta, "l1").cpu().double().numpy(),
        l2=norms(delta, "l2").cpu().double().numpy(),
        linf=norms(delta, "linf").cpu().double().numpy(),
        forward_calls=forward,
        gradient_calls=gradient,
        seconds=np.zeros(m),
    )
    return rec, x_adv


def _audit(
    x_adv: Tensor, x: Tensor, threat: ThreatModel, bounds: tuple[float, float], attack: Attack
) -> None:
    """The final check AutoAttack recommends: no NaN, budget and box respected."""
    if not torch.isfinite(x_adv).all() or not threat.within(x_adv, x, bounds).all():
        raise AegisError(
            f"internal error: {attack.registry_name} returned inputs outside the {threat.norm} "
            f"ball of radius {threat.eps} or the box {bounds}; please report this bug"
        )
