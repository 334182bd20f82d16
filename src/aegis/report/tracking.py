"""Experiment tracking: log a finished run directory to MLflow (``--mlflow`` on every command
that writes a run directory, ``aegis report RUN_DIR --mlflow`` for one already written).

Everything logged is read from the run's ``results.json``, the single source (as for the HTML
report), so a run logged later logs the same figures as one logged when it finished:

- params: the provenance sections (``kind``, ``seed``, ``config``, ``model``, ``data``,
  ``query_data``) flattened to dotted names (``config.threat.eps``, ``config.attack.steps``,
  ``model.provenance.sha256``), and every text of the result sections
  (``detection.attack.name``); values as JSON text (``0.3``, ``true``, ``null``,
  ``[0.1, 0.3]``), cut to MLflow's limit of 6,000 characters;
- metrics: every number of the result sections (true/false as 1/0) by its dotted path:
  ``metrics.clean_accuracy``, ``metrics.adversarial_accuracy``, ``metrics.success.rate``,
  ``metrics.norms.linf.median``, ``metrics.adversarial.recall.3`` (class 3). The rows of a
  list are named by their ``name`` (``rows.mnist_cnn_pgd.adversarial_accuracy``), else by the
  budget or radius they are at (``sweep.eps_0.3.metrics.adversarial_accuracy``,
  ``minimal.curve.eps_1.accuracy``, ``certification.certified_accuracy.radius_0.5.accuracy``),
  else by position; plus the run's ``seconds``. Per-sample records, confusion matrices and
  lists of more than :data:`MAX_LIST` numbers are left out. Characters MLflow refuses in a
  name become ``_``;
- tags: ``aegis.version``, ``aegis.command`` (attack, defend, detect, certify, audit, ...),
  ``aegis.verdict`` where the run has one, the package versions and the run directory;
- artifacts: ``results.json``, ``report.html`` and every ``.png`` of the run directory.

An audit is one run with a nested child run per evaluation (each from its own run directory).
The run id is returned and appended to ``RUN_DIR/mlflow.json``.

    >>> run_id = log_run("runs/demo-untargeted", uri="sqlite:///mlflow.db")
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import shlex
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import unquote, urlsplit, urlunsplit

from aegis.errors import AegisError, TrackingError
from aegis.io import rundir

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
"""The store when neither ``--mlflow-uri`` nor ``MLFLOW_TRACKING_URI`` names one: MLflow 3's own
default (its file store is in maintenance mode), so ``mlflow ui`` started in the same folder
shows the runs. Artifacts go to ``mlruns/`` beside the database."""

DEFAULT_EXPERIMENT = "aegis"
RECORD = "mlflow.json"
"""Where the run ids of a run directory's MLflow runs are written."""

INSTALL = "--mlflow needs MLflow: pip install 'aegis-robust[mlflow]'"

PARAM_SECTIONS = ("kind", "seed", "config", "model", "data", "query_data")
"""Top-level sections that say what was run: logged as params."""

SKIP = frozenset(
    {
        "schema",
        "created",
        "command",
        "versions",
        "sanity",
        "records",
        "gallery",
        "files",
        "certificates",
        "out_dir",
    }
)
"""Top-level sections that are provenance (logged as tags) or per-sample data."""

_SKIP_PARTS = frozenset({"records", "gallery", "certificates", "confusion", "index", "text"})
"""Parts left out at any depth: per-sample data, confusion matrices, positions, and verdict
texts (the headline one is the run's description)."""
_ROW_KEYS = (
    ("name",),
    ("variant",),
    ("threshold",),
    ("out_dir",),
    ("class",),
    ("eps",),
    ("radius",),
    ("output", "budget"),
)
"""Fields that name the rows of a list, tried in order (the first that names every row
differently)."""

MAX_LIST = 100
"""Lists of more numbers than this are per-sample data or curves, not figures: left out."""

MAX_NAME, MAX_PARAM, MAX_TAG = 250, 6000, 8000
"""MLflow's limits on a name's and on a param's and a tag's value's length."""

COMMANDS = {
    None: "attack",
    "defense-comparison": "defend",
    "detection": "detect",
    "certification": "certify",
    "poisoning": "poison",
    "extraction": "extract",
    "membership": "membership",
    "audit": "audit",
}
"""The ``aegis`` command that writes each ``kind`` of results."""


# -- what is logged: pure functions of results.json -------------------------------------------


def _leaves(value: Any, prefix: str, out: dict[str, Any]) -> None:
    """Every leaf of ``value`` by dotted path; a list of scalars is one leaf."""
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k) not in _SKIP_PARTS:
                _leaves(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        for key, v in zip(_row_names(value), value, strict=True):
            _leaves(v, f"{prefix}.{key}" if prefix else key, out)
    else:
        out[prefix] = value


def _row_name(row: Any, fields: tuple[str, ...]) -> str | None:
    parts = []
    for field in fields:
        v = row.get(field) if isinstance(row, dict) else None
        if isinstance(v, str) and v:
            parts.append(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{field}_{v:g}")
        else:
            return None
    return "-".join(parts)


def _row_names(rows: list[Any]) -> list[str]:
    """Stable names for a list's rows: by the first of :data:`_ROW_KEYS` that names every row
    differently (a number as ``eps_0.3``); else their positions."""
    for fields in _ROW_KEYS:
        names = [_row_name(r, fields) for r in rows]
        if None not in names and len(set(names)) == len(names):
            return [str(n) for n in names]
    return [str(i) for i in range(len(rows))]


def _is_number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _sections(results: dict[str, Any], params: bool) -> dict[str, Any]:
    if params:
        return {k: results[k] for k in PARAM_SECTIONS if k in results}
    return {k: v for k, v in results.items() if k not in SKIP and k not in PARAM_SECTIONS}


def figures(results: dict[str, Any]) -> dict[str, float]:
    """The metrics logged for ``results``, by their dotted path in it (not yet MLflow names)."""
    leaves: dict[str, Any] = {}
    _leaves(_sections(results, params=False), "", leaves)
    out: dict[str, float] = {}
    for path, value in leaves.items():
        if isinstance(value, bool) or _is_number(value):
            out[path] = float(value)
        elif isinstance(value, list) and len(value) <= MAX_LIST:
            for i, v in enumerate(value):
                if isinstance(v, bool) or _is_number(v):
                    out[f"{path}.{i}"] = float(v)
    return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, allow_nan=True)


def settings(results: dict[str, Any]) -> dict[str, str]:
    """The params logged for ``results`` (dotted paths, values as JSON text, not yet cut)."""
    leaves: dict[str, Any] = {}
    _leaves(_sections(results, params=True), "", leaves)
    out = {path: _text(v) for path, v in leaves.items() if v != {} and v != []}
    rest: dict[str, Any] = {}
    _leaves(_sections(results, params=False), "", rest)
    for path, value in rest.items():
        if isinstance(value, str) or (
            isinstance(value, list) and value and all(isinstance(v, str) for v in value)
        ):
            out[path] = _text(value)
    return out


def verdict(results: dict[str, Any]) -> str | None:
    """A short verdict: an audit's ``passed`` / ``failed``; an attack's ``suspicious``,
    ``threshold reached``, ``below threshold`` or ``no threshold``; None for other kinds."""
    if results.get("kind") == "audit":
        return "passed" if results.get("passed") else "failed"
    v = (results.get("metrics") or {}).get("verdict") if "kind" not in results else None
    if not isinstance(v, dict):
        return None
    if v.get("suspicious"):
        return "suspicious"
    reached = v.get("reached")
    if reached is None:
        return "no threshold"
    return "threshold reached" if reached else "below threshold"


def labels(results: dict[str, Any], run_dir: Path) -> dict[str, str]:
    """The tags logged for ``results`` (MLflow's ``mlflow.note.content`` is the run's
    description, shown on its page)."""
    kind = results.get("kind")
    tags = {
        "aegis.command": COMMANDS.get(kind, str(kind)),
        "aegis.kind": str(kind or "attack"),
        "aegis.schema": str(results.get("schema")),
        "aegis.run_dir": str(run_dir.resolve()),
    }
    versions = results.get("versions")
    if isinstance(versions, dict):
        if "aegis" in versions:
            tags["aegis.version"] = str(versions["aegis"])
        tags.update({f"aegis.versions.{k}": str(v) for k, v in versions.items()})
    short = verdict(results)
    if short is not None:
        tags["aegis.verdict"] = short
    text = ((results.get("metrics") or {}).get("verdict") or {}).get("text")
    if isinstance(text, str):
        tags["mlflow.note.content"] = text
    argv = results.get("command")
    if isinstance(argv, list):
        tags["aegis.argv"] = shlex.join(str(a) for a in argv)
    return {k: v[:MAX_TAG] for k, v in tags.items()}


def mlflow_name(path: str) -> str:
    """A dotted path as a name MLflow accepts: each run of other characters (spaces, ``/``,
    ``:``, ``=``, ``+``) becomes one ``_``; one longer than MLflow allows is cut and given a
    digest suffix."""
    name = re.sub(r"[^\w.\-]+", "_", path)
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(path.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9]}_{digest}"
    return name


def _named(values: dict[str, Any]) -> dict[str, Any]:
    """Keys as MLflow names; two paths that end up with the same name get ``_2``, ``_3``."""
    out: dict[str, Any] = {}
    for path, value in values.items():
        name, n = mlflow_name(path), 1
        while name in out:
            n += 1
            name = f"{mlflow_name(path)[: MAX_NAME - 4]}_{n}"
        out[name] = value
    return out


def params_of(results: dict[str, Any]) -> dict[str, str]:
    """The params exactly as logged: MLflow names, values cut to MLflow's limit."""
    cut = MAX_PARAM - 1
    return {
        k: v if len(v) <= MAX_PARAM else v[:cut] + "…" for k, v in _named(settings(results)).items()
    }


def metrics_of(results: dict[str, Any]) -> dict[str, float]:
    """The metrics exactly as logged: MLflow names, plus the run's ``seconds``."""
    out = _named(figures(results))
    seconds = results.get("seconds")
    if _is_number(seconds) and "seconds" not in out:
        out["seconds"] = float(seconds)
    return out


def artifacts_of(run_dir: Path) -> list[Path]:
    """``results.json``, ``report.html`` and the run directory's pictures."""
    names = ("results.json", "report.html")
    found = [run_dir / n for n in names if (run_dir / n).is_file()]
    return found + sorted(p for p in run_dir.glob("*.png") if p.is_file())


# -- the store ---------------------------------------------------------------------------------


def resolve_uri(uri: str | None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else :data:`DEFAULT_URI`."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def store_uri(uri: str | None) -> str:
    """The store :func:`log_run` writes to: :func:`resolve_uri`, a local SQLite database by
    its absolute path (so ``mlflow.json`` finds it from any folder)."""
    target = resolve_uri(uri)
    if not target.startswith("sqlite:///"):
        return target
    path = unquote(target[len("sqlite:///") :])
    if not path or path == ":memory:" or path.startswith("/"):
        return target
    return f"sqlite:///{Path(path).resolve()}"


def shown_uri(uri: str) -> str:
    """The URI without a user name or password, for messages and ``mlflow.json``."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _artifact_root(uri: str) -> str | None:
    """For a local SQLite store, ``mlruns/`` beside the database file (MLflow's default is
    ``./mlruns`` of wherever the experiment happened to be created)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri[len("sqlite:///") :])
    if not path or path == ":memory:":
        return None
    return (Path(path).resolve().parent / "mlruns").as_uri()


def _client_class() -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise TrackingError(INSTALL) from exc
    return MlflowClient


def _experiment(client: Any, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return str(client.create_experiment(name, artifact_location=_artifact_root(uri)))
        except Exception:  # created meanwhile by another process: use that one
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage != "active":
        raise TrackingError(
            f"MLflow experiment {name!r} is deleted in {shown_uri(uri)}; restore it "
            "(mlflow experiments restore) or choose another --mlflow-experiment"
        )
    return str(found.experiment_id)


def _millis(results: dict[str, Any]) -> tuple[int, int]:
    """Start and end of the run in ms since the epoch: its ``created`` time and ``seconds``
    (now, for results without them)."""
    now = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    try:
        start = int(dt.datetime.fromisoformat(str(results["created"])).timestamp() * 1000)
    except (KeyError, ValueError):
        return now, now
    seconds = results.get("seconds")
    took = int(seconds * 1000) if _is_number(seconds) and math.isfinite(seconds) else 0
    return start, start + max(took, 0)


def _run_name(results: dict[str, Any], run_dir: Path) -> str:
    command = COMMANDS.get(results.get("kind"), str(results.get("kind")))
    model = results.get("model")
    name = model.get("name") if isinstance(model, dict) else None
    return " ".join(str(p) for p in (command, name, run_dir.name) if p)


def _log_one(
    client: Any,
    experiment_id: str,
    run_dir: Path,
    results: dict[str, Any],
    parent: str | None,
    started: list[tuple[str, dict[str, Any]]],
) -> str:
    """One MLflow run for one run directory, added to ``started`` as soon as it exists and
    left running (the caller ends it)."""
    from mlflow.entities import Metric, Param

    start, _ = _millis(results)
    tags = labels(results, run_dir)
    if parent is not None:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(
        experiment_id, start_time=start, tags=tags, run_name=_run_name(results, run_dir)
    )
    run_id = str(run.info.run_id)
    started.append((run_id, results))
    params = [Param(k, v) for k, v in params_of(results).items()]
    metrics = [Metric(k, v, start, 0) for k, v in metrics_of(results).items()]
    for i in range(0, len(params), 100):  # MLflow: at most 100 params a batch
        client.log_batch(run_id, params=params[i : i + 100])
    for i in range(0, len(metrics), 1000):  # and 1000 metrics
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    for path in artifacts_of(run_dir):
        client.log_artifact(run_id, str(path))
    return run_id


def _end(client: Any, run_id: str, results: dict[str, Any], status: str) -> None:
    client.set_terminated(run_id, status=status, end_time=_millis(results)[1])


def _record(run_dir: Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` to ``RUN_DIR/mlflow.json`` (a damaged one is started again)."""
    path = run_dir / RECORD
    runs: list[Any] = []
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            runs = list(old.get("runs", [])) if isinstance(old, dict) else []
        except (OSError, ValueError):
            runs = []
    rundir.write_json(path, {"runs": [*runs, entry]})


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."


def log_run(
    run_dir: str | Path, *, uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT
) -> str:
    """Log a finished run directory (or its ``results.json``) to MLflow; return the run id.

    ``uri`` is the tracking store (default: ``MLFLOW_TRACKING_URI``, else
    :data:`DEFAULT_URI`); ``experiment`` is created when missing. An audit gets a child run
    per evaluation. The id is appended to ``RUN_DIR/mlflow.json`` with the store and
    experiment. Raises :class:`~aegis.errors.TrackingError` (one line) when MLflow is not
    installed or the store cannot be written; the run directory is never changed then.
    """
    path = Path(run_dir)
    folder = path.parent if path.is_file() else path
    results = rundir.read_results(path)
    target = store_uri(uri)
    client_class = _client_class()
    client: Any = None
    started: list[tuple[str, dict[str, Any]]] = []  # runs begun and not yet ended
    children: dict[str, str] = {}
    try:
        client = client_class(tracking_uri=target)
        experiment_id = _experiment(client, experiment, target)
        run_id = _log_one(client, experiment_id, folder, results, None, started)
        if results.get("kind") == "audit":
            for e in results.get("evaluations") or []:
                sub = folder / str(e.get("out_dir") if isinstance(e, dict) else "")
                if sub != folder and (sub / "results.json").is_file():
                    sub_results = rundir.read_results(sub)
                    child = _log_one(client, experiment_id, sub, sub_results, run_id, started)
                    _end(client, child, sub_results, "FINISHED")
                    started.pop()
                    children[sub.name] = child
        _end(client, run_id, results, "FINISHED")
        started.clear()
        artifact_uri = str(client.get_run(run_id).info.artifact_uri)
    except Exception as exc:  # any failure of the store (MLflow, SQL, HTTP, files)
        for begun, res in reversed(started):
            try:
                _end(client, begun, res, "FAILED")
            except Exception as again:  # the store is unusable: the first error is the news
                log.debug("could not mark MLflow run %s failed: %s", begun, again)
        if isinstance(exc, AegisError):
            raise
        raise TrackingError(
            f"cannot log {folder} to MLflow at {shown_uri(target)}: {_one_line(exc)}; check "
            f"--mlflow-uri or MLFLOW_TRACKING_URI, then log the run (kept as it is) with "
            f"`aegis report {folder} --mlflow`"
        ) from exc
    entry: dict[str, Any] = {
        "run_id": run_id,
        "experiment": experiment,
        "experiment_id": experiment_id,
        "tracking_uri": shown_uri(target),
        "artifact_uri": artifact_uri,
        "logged": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if children:
        entry["children"] = children
    _record(folder, entry)
    log.info("logged %s to MLflow run %s (%s)", folder, run_id, shown_uri(target))
    return run_id
