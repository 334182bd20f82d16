"""Batch sizes sized to memory, and the out-of-memory test that lets a batch be halved.

An evaluation that is not given a batch size takes the largest one that fits, up to the model's
default (``Classifier.batch_size``, 256): a probe measures what one forward + backward holds per
point (the tensors autograd saves for the backward pass, at batches of 1 and 3, so the weights
cancel out), the attacks say how many copies of a point they send at once (FAB's untargeted
linearization sends K − 1), and the batch is the largest whose estimate fits in ``MEMORY_SHARE``
of the free memory: the GPU's when the model is on one, else the machine's (the smaller of
``MemAvailable`` and the cgroup's room). ``AEGIS_MEMORY_LIMIT`` (``"8GiB"``, ``"512MB"``, bytes)
caps what is taken as free, for a shared machine.

Below the default the batch size changes the records of a random attack (each batch draws from
its own seed), so the plan is recorded, and a resumed run reuses the size it started with.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aegis.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

    from aegis.model import Classifier

log = logging.getLogger(__name__)

MEMORY_SHARE = 0.5
"""The share of the free memory an evaluation plans its batches for."""

GRAPH_MARGIN = 1.5
"""The peak of a forward + backward over the tensors autograd saves: the backward pass holds
gradient buffers beside them (peak RSS growth over the saved tensors, measured on the CPU at
batch 16-64: ResNet-18 1.2x, WideResNet-28-10 1.15x, ResNet-50 0.9x)."""

STATE_COPIES = 8
"""Input-sized tensors an attack keeps per point besides the graph (x, x_adv, its gradient,
momentum, the best point so far, the step's candidate, the random start and the output)."""

_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)

_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "failed to allocate")
"""How the allocators word it in a ``RuntimeError`` (CUDA and MPS; the CPU's, glibc's)."""

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


@dataclass(frozen=True)
class BatchPlan:
    """The batch size of an evaluation and why: ``given`` (by the caller), ``resumed`` (the
    size a checkpointed run started with), ``default`` (the model's, which fits) or
    ``memory`` (the largest that fits, below the default)."""

    size: int
    chosen_by: str
    default: int
    point_bytes: int | None = None
    rows_per_point: int = 1
    free_bytes: int | None = None
    share: float = MEMORY_SHARE

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "chosen_by": self.chosen_by,
            "default": self.default,
            "point_bytes": self.point_bytes,
            "rows_per_point": self.rows_per_point,
            "free_bytes": self.free_bytes,
            "share": self.share,
        }


def parse_bytes(text: str) -> int:
    """``"8GiB"``, ``"512 MB"`` or a plain number of bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b|b)?\s*", text.lower())
    if m is None:
        raise ConfigError(f"AEGIS_MEMORY_LIMIT must be a size such as 8GiB or 512MB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def free_bytes(device: torch.device) -> int | None:
    """Memory free for this process on ``device`` (None where it cannot be read), capped by
    ``AEGIS_MEMORY_LIMIT``."""
    free: int | None = None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # Blocks torch's caching allocator holds but does not use are free to this process.
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    elif device.type == "cpu":
        free = _host_free()
    limit = os.environ.get("AEGIS_MEMORY_LIMIT")
    if limit:
        cap = parse_bytes(limit)
        free = cap if free is None else min(free, cap)
    return free


def _host_free() -> int | None:
    room: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < 2**60:
                room.append(int(limit) - int(Path(usage_file).read_text().strip()))
            break
        except (OSError, ValueError):
            continue
    return max(min(room), 0) if room else None


def point_bytes(model: Classifier, x: Tensor) -> int | None:
    """What one more point costs a forward + backward of ``model``, in bytes (None for a
    query-only model): half the tensors autograd saves at a batch of 3 minus those at 1
    (weights and other fixed tensors cancel), with ``GRAPH_MARGIN`` for the backward's
    buffers and ``STATE_COPIES`` input-sized copies for the attack's own state."""
    if model.module is None:
        return None
    model.choose_layout()  # its one-off probes are not the attack's graph
    probe = x[:1].to(model.device, torch.float32)
    saved = [_saved_bytes(model, probe.repeat(b, *([1] * (probe.ndim - 1)))) for b in (1, 3)]
    graph = max(saved[1] - saved[0], 0) // 2
    return int(GRAPH_MARGIN * graph) + STATE_COPIES * probe[0].numel() * probe.element_size()


def _saved_bytes(model: Classifier, x: Tensor) -> int:
    """Bytes of the distinct storages autograd saves for the backward of ``model`` on ``x``."""
    seen: dict[tuple[str, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        xg = x.detach().requires_grad_(True)
        out = model.logits_graph(xg)
        (grad,) = torch.autograd.grad(out.sum(), xg)
    del grad
    return sum(seen.values())


def plan_batch(
    model: Classifier,
    x: Tensor,
    attacks: Sequence[Any],
    *,
    targeted: bool = False,
    given: int | None = None,
    resumed: int | None = None,
    share: float = MEMORY_SHARE,
) -> BatchPlan:
    """The batch size for attacking ``x`` with ``attacks`` on ``model`` (module docstring)."""
    default = model.batch_size
    if given is not None:
        return BatchPlan(given, "given", default)
    if resumed is not None:
        return BatchPlan(resumed, "resumed", default)
    rows = max([int(a.memory_rows(model.num_classes, targeted)) for a in attacks] or [1])
    try:
        per_point = point_bytes(model, x) if x.shape[0] else None
    except Exception as exc:  # e.g. a backward the model lacks: a black-box attack still runs
        log.debug("memory probe failed (%s); the default batch size is kept", exc)
        per_point = None
    free = free_bytes(model.device)
    if per_point is None or free is None or per_point == 0:
        return BatchPlan(default, "default", default, per_point, rows, free, share)
    fits = math.floor(share * free / (per_point * rows))
    if fits < 1:
        log.warning(
            "one point needs about %.1f GiB for this attack (%d copies) but %.1f GiB is free; "
            "running one point per batch (out-of-memory errors may follow)",
            per_point * rows / 2**30,
            rows,
            free / 2**30,
        )
    size = max(1, min(default, fits))
    chosen_by = "default" if size == default else "memory"
    if chosen_by == "memory":
        log.info(
            "batch size %d (of %d) fits %.0f%% of the %.1f GiB free at %.1f MiB a point",
            size,
            default,
            100 * share,
            free / 2**30,
            per_point * rows / 2**20,
        )
    return BatchPlan(size, chosen_by, default, per_point, rows, free, share)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator running out of memory (CUDA, MPS or the CPU's)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(words in text for words in _OUT_OF_MEMORY)


def release_memory(device: torch.device) -> None:
    """Give freed blocks back after an out-of-memory error, before the retry."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
