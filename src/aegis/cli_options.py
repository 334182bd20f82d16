"""What every ``aegis`` command shares: exit codes, option types checked before any file is
written, and the one rule that makes a bad option value a usage error (exit code 2).

Exit codes:
  0  done (for ``attack --gate``: the attack stayed below the success threshold)
  1  error: a file that cannot be used, a failed run (one line on stderr)
  2  usage error: an unknown option, a missing argument, or an option value the command
     cannot take (one line naming the option and the fix)
  3  gate tripped: ``attack --gate`` reached --success-threshold, or an ``audit`` threshold
     failed (block the model in CI)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from aegis.errors import ConfigError, UsageError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_GATE = 0, 1, 2, 3

SEED_MAX = 2**63 - 1


@contextmanager
def checking_options() -> Iterator[None]:
    """A ConfigError raised while a command checks its options is a usage error (exit 2)."""
    try:
        yield
    except UsageError:
        raise
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc


def _seed(value: int) -> int:
    if not 0 <= value <= SEED_MAX:
        raise UsageError(f"--seed must be an integer in [0, 2**63 - 1], got {value}")
    return value


def _device(value: str | None) -> str | None:
    if value is None:
        return None
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"--device {value!r} is not a torch device; use cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {value}: this torch has no usable CUDA GPU (a CPU build, or no GPU "
                "visible); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {value}: there are {torch.cuda.device_count()} CUDA GPU(s); use "
                f"cuda:0 … cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {value}: no Apple MPS device here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {value}: aegis runs on cpu, cuda or mps")
    return value


Seed = Annotated[
    int,
    typer.Option(callback=_seed, help="Random seed, 0 … 2**63 − 1 (same seed → same result)."),
]
Device = Annotated[
    str | None,
    typer.Option(
        callback=_device,
        help="Torch device: cpu, cuda, cuda:N or mps (checked before anything runs).",
    ),
]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace an earlier run in --out: remove the files it wrote (results, pictures, "
        "report, checkpointed batches) first. Without it, a directory holding a finished run "
        "or an unfinished run's checkpoints is refused.",
    ),
]
TrustSidecar = Annotated[
    bool,
    typer.Option(
        "--trust-sidecar",
        help="Let the model's model.json sidecar name a factory that is not a registered "
        "architecture: its package.module:function is imported and called, which RUNS CODE "
        "named by that file. Only for sidecars from a trusted source; --factory is the "
        "explicit way.",
    ),
]
