"""What every ``aegis`` command shares: exit codes (defined here only), option types (some
checked before any file is written, the ``--mlflow`` ones of every command that writes a run
directory), the one rule that makes a bad option value a usage error (exit code 2), and the
few conversions of option text into what the Python API takes.

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
from pathlib import Path
from typing import Annotated, Any

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
    """The device a command runs on: ``auto`` (and no value) is the GPU when torch sees one,
    else None (the CPU, where a module's parameters are)."""
    import torch

    if value is None or value.strip().lower() == "auto":
        return "cuda" if torch.cuda.is_available() else None

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
        help="Torch device: auto (the default: a CUDA GPU when torch sees one, else the CPU), "
        "cpu, cuda, cuda:N or mps (checked before anything runs). The model is moved once; "
        "records match the CPU's within float tolerance.",
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

Labels = Annotated[str | None, typer.Option("--labels", "-y", help="Labels .npy.")]
NpyLabels = Annotated[
    str | None, typer.Option("--labels", "-y", help="Labels .npy for a .npy data file.")
]
Data = Annotated[str, typer.Argument(help="Data: .npy/.npz, image folder or built-in name.")]
Limit = Annotated[int | None, typer.Option(help="Use only the first N inputs.")]
Out = Annotated[Path | None, typer.Option(help="Run directory for results.json.")]
BatchSize = Annotated[int | None, typer.Option(help="Inputs per batch.")]
NumClasses = Annotated[int | None, typer.Option(help="Model outputs (classes).")]
Factory = Annotated[str | None, typer.Option(help="package.module:function building the network.")]
WeightsFactory = Annotated[
    str | None,
    typer.Option(help="package.module:function building the network for a weights file."),
]
InputShape = Annotated[str | None, typer.Option(help="Model input C,H,W, e.g. 1,28,28.")]
Layout = Annotated[str | None, typer.Option(help="Model input layout: NCHW, NHWC or flat.")]

Mlflow = Annotated[
    bool,
    typer.Option(
        "--mlflow",
        help="Once the run directory is written, log it to MLflow: params (config, model, "
        "data, seed), every figure of results.json as a metric, tags (aegis version, "
        "command, verdict) and results.json, report.html and the pictures as artifacts. The "
        "run id goes to OUT/mlflow.json. Needs aegis-robust[mlflow].",
    ),
]
MlflowUri = Annotated[
    str | None,
    typer.Option(
        "--mlflow-uri",
        metavar="URI",
        help="Tracking store for --mlflow (implies it): sqlite:///PATH.db, http(s)://SERVER, "
        "... Default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current folder "
        "(artifacts in ./mlruns), which `mlflow ui` started there shows.",
    ),
]
MlflowExperiment = Annotated[
    str | None,
    typer.Option(
        "--mlflow-experiment",
        metavar="NAME",
        help="MLflow experiment for --mlflow (implies it), created when missing. Default: aegis.",
    ),
]


# -- option values as the Python API takes them --------------------------------------------


def floats(text: str | None, what: str) -> tuple[float, ...] | None:
    """Comma-separated numbers (``what`` names the option in the error)."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from exc


def params(items: list[str] | None) -> dict[str, Any]:
    """``NAME=VALUE`` pairs → hyper-parameters as text; each attack or defense converts them
    by its fields' declared types (``aegis.params``), naming a value that does not fit."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        name = key.strip().replace("-", "_")
        if not sep or not name or not raw.strip():
            raise ConfigError(f"--param takes NAME=VALUE, got {item!r}")
        if name in out:
            raise ConfigError(f"--param {name} is given twice; keep one")
        out[name] = raw.strip()
    return out


def model_options(
    num_classes: int | None,
    factory: str | None,
    device: str | None,
    batch_size: int | None,
    trust_sidecar: bool = False,
) -> dict[str, Any]:
    """The model options the Python API takes, those not given left out."""
    options = {
        "num_classes": num_classes,
        "factory": factory,
        "device": device,
        "batch_size": batch_size,
        "trust_sidecar": trust_sidecar or None,
    }
    return {k: v for k, v in options.items() if v is not None}


def items(text: str) -> list[str]:
    """Comma-separated names, blanks dropped."""
    return [v.strip() for v in text.split(",") if v.strip()]
