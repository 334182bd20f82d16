"""Run directories: ``results.json`` (versioned schema), ``samples.npz`` and the files beside
them. Pure file I/O: rendering ``report.html`` is the workflows' step
(``aegis.workflows.rundir_writer``).

Nothing is written until the evaluation has finished; every file is written to a temporary name
and renamed, and ``results.json`` is written last, so a directory with a ``results.json`` is a
complete result and a failed run leaves nothing that looks like one.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from aegis.atomic import atomic, write_error
from aegis.errors import AegisError

SCHEMA = "aegis.results/1"


def header(seed: int, kind: str | None = None) -> dict[str, Any]:
    """The fields every ``results.json`` starts with: schema, kind (absent for an attack run),
    creation time, the ``aegis`` command line, package versions and the seed."""
    out: dict[str, Any] = {"schema": SCHEMA}
    if kind is not None:
        out["kind"] = kind
    out["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    out["command"] = sys.argv if sys.argv and sys.argv[0].endswith("aegis") else None
    out["versions"] = versions()
    out["seed"] = seed
    return out


def versions() -> dict[str, str]:
    import torch

    from aegis._version import __version__

    return {
        "aegis": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in results.json")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=1, default=json_default, allow_nan=True)
    with atomic(path) as tmp:
        tmp.write_text(text)


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic(path, ".tmp.npz") as tmp:
        np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]


def prepare(out: Path) -> Path:
    """Create ``out`` (or reuse it); refuse a path that is a file."""
    if out.exists() and not out.is_dir():
        raise AegisError(f"--out {out} is a file; give a directory for the run")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc) from exc
    return out


def default_run_dir(root: Path, label: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{stamp}-{label}"
    i = 1
    while path.exists():
        i += 1
        path = root / f"{stamp}-{label}-{i}"
    return path


def read_results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json" if run_dir.is_dir() else run_dir
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AegisError(
            f"cannot read {path}: {exc}; point to a finished run directory, or rerun the "
            "aegis command that wrote it"
        ) from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise AegisError(
            f"{path} is not an aegis results file of schema {SCHEMA}; point to the "
            "results.json of a run directory written by aegis"
        )
    return data
