"""``--mlflow``: runs logged to a real local MLflow store (SQLite in tmp_path) and read back
with ``MlflowClient``: params, metrics equal to results.json's numbers, tags, artifacts; an
audit with a child run per evaluation; ``aegis report --mlflow`` on a finished run; the
one-line errors (bad store, MLflow missing) that keep the run directory."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from _factories import attack_argv
from mlflow.tracking import MlflowClient  # the dev extra installs MLflow: no skipping

import aegis
from aegis.cli import EXIT_ERROR, EXIT_OK
from aegis.report.tracking import (
    INSTALL,
    MAX_LIST,
    MAX_NAME,
    MAX_PARAM,
    metrics_of,
    mlflow_name,
    params_of,
    resolve_uri,
    shown_uri,
)

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite tracking store for the module (creating its tables takes a second)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _attack(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return attack_argv(files, out, "--eps", "0.1,0.3", "--steps", "5", *extra)


def _runs(run_dir: Path) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = json.loads((run_dir / "mlflow.json").read_text())["runs"]
    return runs


def _results(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "results.json").read_text())
    return data


@pytest.fixture(scope="module")
def attacked(
    tiny_files: dict[str, Path], store: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """An attack sweep run with --mlflow: (run directory, run id)."""
    from aegis.cli import main

    out = tmp_path_factory.mktemp("attacked") / "run"
    argv, sys.argv = sys.argv, ["aegis", *_attack(tiny_files, out), "--mlflow-uri", store]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, f"aegis attack exited with {exc.code}"
    finally:
        sys.argv = argv
    (entry,) = _runs(out)
    return out, entry["run_id"]


def test_attack_logs_params_metrics_tags_and_artifacts(
    attacked: tuple[Path, str], store: str, tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    out, run_id = attacked
    res = _results(out)
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "aegis"

    params = run.data.params
    assert params["config.attack.name"] == "pgd" and params["config.attack.steps"] == "5"
    assert params["config.threat.norm"] == "linf" and params["config.threat.eps"] == "0.3"
    assert params["seed"] == "0" and params["data.n"] == "60"
    digest = hashlib.sha256(tiny_files["model"].read_bytes()).hexdigest()
    assert params["model.provenance.sha256"] == digest == res["model"]["provenance"]["sha256"]
    assert params == params_of(res)

    metrics = run.data.metrics
    assert metrics == metrics_of(res)  # every figure, exactly as results.json holds it
    m = res["metrics"]
    assert metrics["metrics.clean_accuracy"] == m["clean_accuracy"]
    assert metrics["metrics.adversarial_accuracy"] == m["adversarial_accuracy"]
    assert metrics["metrics.success.rate"] == m["success"]["rate"]
    assert metrics["metrics.norms.linf.median"] == m["norms"]["linf"]["median"]
    assert metrics["metrics.adversarial.recall.2"] == m["adversarial"]["recall"][2]
    for point in res["sweep"]:  # robust accuracy per ε, named by its budget
        name = f"sweep.eps_{point['eps']:g}.metrics.adversarial_accuracy"
        assert metrics[name] == point["metrics"]["adversarial_accuracy"]
    assert metrics["sweep.eps_0.1.metrics.adversarial_accuracy"] > m["adversarial_accuracy"]
    assert metrics["seconds"] == res["seconds"]
    assert not [k for k in metrics if "records" in k or "confusion" in k or "gallery" in k]

    tags = run.data.tags
    assert tags["aegis.version"] == aegis.__version__ and tags["aegis.command"] == "attack"
    assert tags["aegis.verdict"] == "no threshold"
    assert tags["mlflow.note.content"] == m["verdict"]["text"]
    assert tags["aegis.run_dir"] == str(out.resolve())

    names = {a.path for a in client.list_artifacts(run_id)}
    assert names == {"results.json", "report.html", "grid.png", "curve.png"}
    got = Path(client.download_artifacts(run_id, "results.json", str(tmp_path)))
    assert got.read_bytes() == (out / "results.json").read_bytes()
    artifacts = Path(store.removeprefix("sqlite:///")).parent / "mlruns"
    assert (artifacts / run_id / "artifacts" / "report.html").is_file()  # beside the store


def test_report_logs_a_finished_run_without_recomputing(
    attacked: tuple[Path, str], store: str, cli: Cli
) -> None:
    out, first = attacked
    before = (out / "results.json").read_bytes()
    code, text, err = cli("report", str(out / "results.json"), "--mlflow-uri", store)
    assert code == EXIT_OK, err
    runs = _runs(out)
    assert runs[0]["run_id"] == first and len(runs) == 2  # appended, the first one kept
    second = runs[1]["run_id"]
    assert f"mlflow: run {second}" in text and second != first
    assert (out / "results.json").read_bytes() == before
    client = MlflowClient(tracking_uri=store)
    a, b = client.get_run(first).data, client.get_run(second).data
    assert a.metrics == b.metrics and a.params == b.params
    assert (
        b.metrics["metrics.adversarial_accuracy"]
        == _results(out)["metrics"]["adversarial_accuracy"]
    )


def test_default_store_is_sqlite_here(
    attacked: tuple[Path, str],
    store: str,
    cli: Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--mlflow alone: MLFLOW_TRACKING_URI if set, else sqlite:///mlflow.db in the current
    folder with the artifacts in ./mlruns."""
    out, _ = attacked
    # a copy of the module's store: its tables exist already (creating them takes seconds)
    shutil.copy(store.removeprefix("sqlite:///"), tmp_path / "mlflow.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_uri(None) == "sqlite:///mlflow.db"
    code, text, err = cli("report", str(out), "--mlflow", "--mlflow-experiment", "here")
    assert code == EXIT_OK, err
    here = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"  # recorded as an absolute path
    assert f"at {here} " in text
    run_id = _runs(out)[-1]["run_id"]
    assert _runs(out)[-1]["tracking_uri"] == here
    assert (tmp_path / "mlruns" / run_id / "artifacts" / "results.json").is_file()
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id)
    assert run.data.metrics == metrics_of(_results(out))

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_uri(None) == "http://tracking.example:5000"
    assert resolve_uri("sqlite:///x.db") == "sqlite:///x.db"  # --mlflow-uri wins


def test_a_bad_store_is_one_line_and_keeps_the_run(
    tiny_files: dict[str, Path], cli: Cli, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = tmp_path / "run"
    bad = f"sqlite:///{blocker / 'sub' / 'mlflow.db'}"
    code, text, err = cli(*_attack(tiny_files, out, "--mlflow-uri", bad))
    assert code == EXIT_ERROR
    assert err.startswith(f"error: cannot log {out} to MLflow at {bad}: ") and err.count("\n") == 1
    assert "aegis report" in err and "--mlflow-uri" in err  # names the fix
    assert "verdict:" in text  # the run itself finished and was reported
    assert (out / "results.json").is_file() and (out / "report.html").is_file()
    assert not (out / "mlflow.json").exists()

    code, _, err = cli("report", str(out), "--mlflow-uri", "nosuch://store")
    assert code == EXIT_ERROR and err.count("\n") == 1
    assert err.startswith(f"error: cannot log {out} to MLflow at nosuch://store: ")
    assert not (out / "mlflow.json").exists()


def test_a_failure_midway_marks_the_run_failed(
    attacked: tuple[Path, str], store: str, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = attacked
    logged = len(_runs(out))
    client = MlflowClient(tracking_uri=store)

    def full(self: Any, run_id: str, local_path: str, artifact_path: Any = None) -> None:
        raise OSError("No space left on device")

    with monkeypatch.context() as m:
        m.setattr(MlflowClient, "log_artifact", full)
        code, _, err = cli("report", str(out), "--mlflow-uri", store, "--mlflow-experiment", "x")
    assert code == EXIT_ERROR and err.count("\n") == 1 and "No space left on device" in err
    assert len(_runs(out)) == logged  # nothing recorded for a run that did not make it
    experiment = client.get_experiment_by_name("x")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"

    client.delete_experiment(experiment.experiment_id)
    code, _, err = cli("report", str(out), "--mlflow-uri", store, "--mlflow-experiment", "x")
    assert code == EXIT_ERROR and err.count("\n") == 1
    assert "MLflow experiment 'x' is deleted" in err and "--mlflow-experiment" in err


def test_missing_mlflow_names_the_install(
    attacked: tuple[Path, str], cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = attacked
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # import fails as if missing
    code, _, err = cli("report", str(out), "--mlflow")
    assert code == EXIT_ERROR and err == f"error: {INSTALL}\n"
    assert INSTALL == "--mlflow needs MLflow: pip install 'aegis-robust[mlflow]'"


def test_audit_logs_one_run_with_a_child_per_evaluation(
    tiny_files: dict[str, Path], store: str, cli: Cli, tmp_path: Path
) -> None:
    config = {
        "models": [str(tiny_files["model"])],
        "data": str(tiny_files["x"]),
        "labels": str(tiny_files["y"]),
        "mlflow": {"uri": store, "experiment": "audits"},
        "evaluations": [
            {"type": "attack", "eps": 0.3, "params": {"steps": 5}},
            {
                "type": "attack",
                "name": "sweep",
                "eps": [0.1, 0.3],
                "params": {"steps": 5},
                "require": {"min_clean_accuracy": 0.5},
            },
        ],
    }
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "audit"
    code, text, err = cli("audit", str(path), "--out", str(out))
    assert code == EXIT_OK, err
    (entry,) = _runs(out)
    assert f"mlflow: run {entry['run_id']} in experiment 'audits'" in text
    client = MlflowClient(tracking_uri=store)
    parent = client.get_run(entry["run_id"])
    res = _results(out)
    assert parent.data.tags["aegis.command"] == "audit"
    assert parent.data.tags["aegis.verdict"] == "passed"
    assert parent.data.metrics == metrics_of(res)
    sweep = res["evaluations"][1]
    assert (
        parent.data.metrics["evaluations.sweep.figures.adversarial_accuracy"]
        == (sweep["figures"]["adversarial_accuracy"])
    )
    assert parent.data.metrics["evaluations.sweep.checks.min_clean_accuracy.passed"] == 1.0
    assert parent.data.metrics["passed"] == 1.0
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {
        "results.json",
        "report.html",
    }

    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    by_id = {c.info.run_id: c for c in children}
    assert set(by_id) == set(entry["children"].values()) and len(by_id) == 2
    for sub, child_id in entry["children"].items():
        child = by_id[child_id]
        assert child.data.metrics == metrics_of(_results(out / sub))
        assert child.data.tags["aegis.command"] == "attack"
        assert "results.json" in {a.path for a in client.list_artifacts(child_id)}

    # --no-mlflow overrides the config's block
    code, _, err = cli("audit", str(path), "--out", str(tmp_path / "quiet"), "--no-mlflow")
    assert code == EXIT_OK, err
    assert not (tmp_path / "quiet" / "mlflow.json").exists()


def test_names_and_values_fit_mlflow() -> None:
    assert mlflow_name("rows.m.safetensors + jpeg:quality=75.f1") == (
        "rows.m.safetensors_jpeg_quality_75.f1"
    )
    long = "metrics." + "x" * 400
    assert len(mlflow_name(long)) == MAX_NAME and mlflow_name(long) != mlflow_name(long + "y")
    assert shown_uri("https://user:secret@host:5000/path") == "https://host:5000/path"
    res: dict[str, Any] = {
        "schema": "aegis.results/1",
        "kind": "custom",
        "config": {"note": "n" * (MAX_PARAM + 50), "eps": [0.1, 0.3], "empty": {}},
        "rows": [{"name": "a b", "acc": 0.5}, {"name": "a:b", "acc": 0.25}],
        "curve": [{"eps": 0.1, "accuracy": 0.9}, {"eps": 0.3, "accuracy": 0.2}],
        "dupes": [{"name": "same", "v": 1}, {"name": "same", "v": 2}],
        "per_sample": list(range(MAX_LIST + 1)),
        "per_class": [0.5, None, 1],
        "flags": {"ok": True},
        "records": {"success": [True]},
    }
    metrics = metrics_of(res)
    assert metrics == {
        "rows.a_b.acc": 0.5,
        "rows.a_b.acc_2": 0.25,  # two rows whose names collide once sanitized
        "curve.eps_0.1.eps": 0.1,
        "curve.eps_0.1.accuracy": 0.9,
        "curve.eps_0.3.eps": 0.3,
        "curve.eps_0.3.accuracy": 0.2,
        "dupes.0.v": 1.0,  # names not unique: by position
        "dupes.1.v": 2.0,
        "per_class.0": 0.5,
        "per_class.2": 1.0,
        "flags.ok": 1.0,
    }
    params = params_of(res)
    assert len(params["config.note"]) == MAX_PARAM and params["config.note"].endswith("…")
    assert params["config.eps"] == "[0.1, 0.3]" and params["kind"] == "custom"
    assert params["rows.a_b.name"] == "a b" and "config.empty" not in params
