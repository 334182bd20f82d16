"""What a format loader returns, and the helpers every loader shares.

:mod:`aegis.io.models` dispatches a model file to one of the format modules
(:mod:`aegis.io.torch_formats`, :mod:`aegis.io.keras_format`, :mod:`aegis.io.onnx_format`); each
returns a :class:`_Loaded` that ``models`` then completes with metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aegis.errors import ModelError

_ZIP_MAGIC = b"PK\x03\x04"

Factory = Callable[..., Any]
QueryFn = Callable[[np.ndarray], np.ndarray]
Dims = tuple[int | None, ...]


@dataclass
class _Loaded:
    """What a format loader found: a torch module and/or a query function, plus what it knows."""

    fmt: str
    module: nn.Module | None = None
    query_fn: QueryFn | None = None
    dims: Dims | None = None  # per-sample input shape the file declares, None where symbolic
    default_layout: str | None = None  # the documented default layout for this format
    notes: dict[str, str] = field(default_factory=dict)
    probabilities: bool = False  # the file itself says its output is a softmax
    fresh: bool = False  # the module was built here (factory), so its train/eval mode is ours


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:limit]


def _corrupt(file: Path, what: str, exc: BaseException) -> ModelError:
    lines = str(exc).strip().splitlines()
    detail = " ".join(lines[0].split())[:200] if lines else type(exc).__name__
    return ModelError(
        f"cannot read {file.name} as {what} ({detail}); the file is corrupt, truncated or not "
        "that format: re-save or re-download it"
    )


class _StaticBatch(nn.Module):
    """Runs a model that only accepts batches of exactly ``size`` in chunks of that size."""

    def __init__(self, inner: nn.Module, size: int) -> None:
        super().__init__()
        self.inner = inner
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if n == self.size:
            return _first_tensor(self.inner(x))
        parts = []
        for i in range(0, n, self.size):
            chunk = x[i : i + self.size]
            m = chunk.shape[0]
            if m < self.size:
                # Pad with detached copies of the last row: no gradient leaks into the pad.
                pad = chunk[-1:].detach().expand(self.size - m, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad])
            parts.append(_first_tensor(self.inner(chunk))[:m])
        return torch.cat(parts)


def _first_tensor(out: Any) -> Tensor:
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if isinstance(out, Mapping) and out:
        out = next(iter(out.values()))
    if not isinstance(out, Tensor):
        raise ModelError(
            f"model returned {type(out).__name__}, not a tensor of logits; wrap it so that "
            "forward returns the logits tensor"
        )
    return out


def _device_of(module: nn.Module) -> torch.device:
    for t in [*module.parameters(), *module.buffers()]:
        return t.device
    return torch.device("cpu")


def _to_layout(x: Tensor, layout: str) -> Tensor:
    if layout == "NHWC":
        return x.permute(0, 2, 3, 1).contiguous()
    if layout == "flat":
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    return x
