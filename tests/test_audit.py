"""``aegis audit``: config validation (one line naming the key), a real audit on digits, the
exit codes of the CI gate."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from aegis.audit.config import load_config, parse_config
from aegis.cli import EXIT_ERROR, EXIT_GATE, EXIT_OK
from aegis.cli.audit import EXAMPLE
from aegis.errors import ConfigError

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from aegis.zoo.train import train_reference

    out = tmp_path_factory.mktemp("audit-model")
    return str(train_reference("digits", out_dir=out, epochs=3, progress=False).model_path)


def _write(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_example_validates_with_every_commented_evaluation(tmp_path: Path) -> None:
    cfg = parse_config(yaml.safe_load(EXAMPLE), "example")
    assert [e.type for e in cfg.evaluations] == ["attack", "detect"]
    # the commented-out evaluations are valid too once uncommented
    full = re.sub(r"(?m)^  # (-|  )", r"  \1", EXAMPLE)
    types = [e.type for e in parse_config(yaml.safe_load(full), "example").evaluations]
    assert types == ["attack", "detect", "defend", "certify", "poison", "extract", "membership"]


def test_example_cli_writes_a_loadable_file(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "audit.yaml"
    code, out, _ = cli("audit", "--example", str(path))
    assert code == EXIT_OK and "models:" in out
    assert load_config(path).data == "digits"
    code, out, _ = cli("audit", "--example", "-")
    assert code == EXIT_OK and out == EXAMPLE


BASE: dict[str, Any] = {"models": ["m.pt"], "data": "digits"}


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            {**BASE, "evaluations": [{"type": "attack", "epss": 0.3}]},
            "evaluations.0.epss: unknown key",
        ),
        (
            {**BASE, "evaluations": [{"type": "attack"}, {"type": "attack", "eps": 0}]},
            "evaluations.1.eps: must be > 0",
        ),
        (
            {**BASE, "evaluations": [{"type": "attack", "eps": [0.1, -1]}]},
            "evaluations.0.eps.1: must be > 0",
        ),
        (
            {**BASE, "limit": "many", "evaluations": [{"type": "attack"}]},
            "limit: input should be a valid integer",
        ),
        (
            {**BASE, "evaluations": [{"type": "fuzz"}]},
            "evaluations.0: unknown evaluation type 'fuzz'",
        ),
        ({**BASE, "evaluations": [{"attack": "pgd"}]}, "evaluations.0: needs a 'type'"),
        (
            {**BASE, "evaluations": [{"type": "attack", "require": {"max_sucess_rate": 0.1}}]},
            "evaluations.0.require.max_sucess_rate: unknown key",
        ),
        (
            {"data": "digits", "evaluations": [{"type": "attack"}]},
            "models: required key is missing",
        ),
        ({**BASE, "evaluations": []}, "evaluations: must not be empty"),
        (
            {**BASE, "mlflow": {"urii": "sqlite:///m.db"}, "evaluations": [{"type": "attack"}]},
            "mlflow.urii: unknown key",
        ),
    ],
)
def test_invalid_config_is_one_line_naming_the_key(
    tmp_path: Path, cfg: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, cfg))
    text = str(exc.value)
    assert "\n" not in text and text.startswith(f"audit.yaml: {message}"), text


def test_mlflow_block() -> None:
    cfg = {**BASE, "evaluations": [{"type": "attack"}]}
    assert parse_config(cfg).mlflow is None
    assert parse_config({**cfg, "mlflow": False}).mlflow is None
    on = parse_config({**cfg, "mlflow": True}).mlflow
    assert on is not None and on.uri is None and on.experiment == "aegis"
    block = parse_config({**cfg, "mlflow": {"uri": "sqlite:///m.db", "experiment": "x"}}).mlflow
    assert block is not None and (block.uri, block.experiment) == ("sqlite:///m.db", "x")


def test_missing_file_and_bad_yaml(tmp_path: Path, cli: Cli) -> None:
    with pytest.raises(ConfigError, match="cannot read audit config"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [a\nevaluations: {")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line \d"):
        load_config(bad)
    code, _, err = cli("audit", str(bad))
    assert code == EXIT_ERROR and err.count("\n") == 1 and "invalid YAML" in err


def _audit(model: str, attack_require: dict[str, float]) -> dict[str, Any]:
    return {
        "models": [model],
        "data": "digits",
        "limit": 40,
        "evaluations": [
            {
                "type": "attack",
                "attack": "pgd",
                "eps": 0.3,
                "params": {"steps": 5},
                "require": attack_require,
            },
            {
                "type": "detect",
                "fit_limit": 200,
                "adaptive_steps": 5,
                "params": {"steps": 5},
                "require": {"max_clean_flagged": 0.5},
            },
        ],
    }


def test_audit_gate_fails_on_a_threshold(cli: Cli, tmp_path: Path, model_path: str) -> None:
    cfg = _audit(model_path, {"min_clean_accuracy": 0.5, "min_adversarial_accuracy": 0.9})
    out = tmp_path / "run"
    code, stdout, _ = cli("audit", str(_write(tmp_path, cfg)), "--out", str(out))
    assert code == EXIT_GATE, stdout
    assert "FAIL" in stdout and "audit FAILED" in stdout
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "audit" and res["passed"] is False and res["errors"] == 0
    attack, detect = res["evaluations"]
    checks = {c["threshold"]: c for c in attack["checks"]}
    assert checks["min_clean_accuracy"]["passed"] is True
    assert checks["min_adversarial_accuracy"]["passed"] is False
    assert checks["min_adversarial_accuracy"]["value"] < 0.9
    assert detect["passed"] is True and detect["figures"]["clean_flagged"] is not None
    for e in res["evaluations"]:
        sub = out / e["out_dir"]
        assert (sub / "report.html").is_file() and (sub / "results.json").is_file()
    assert attack["out_dir"] == "0-attack-digits_cnn"


def test_audit_passes_and_errors(cli: Cli, tmp_path: Path, model_path: str) -> None:
    cfg = _audit(model_path, {"min_clean_accuracy": 0.5, "max_success_rate": 1.0})
    code, stdout, _ = cli("audit", str(_write(tmp_path, cfg)), "--out", str(tmp_path / "ok"))
    assert code == EXIT_OK, stdout
    assert json.loads((tmp_path / "ok" / "results.json").read_text())["passed"] is True

    # an evaluation that cannot run is recorded, the rest still run, and the exit code is 1
    cfg["evaluations"].insert(0, {"type": "attack", "attack": "no-such-attack"})
    code, _, err = cli("audit", str(_write(tmp_path, cfg)), "--out", str(tmp_path / "bad"))
    assert code == EXIT_ERROR and "failed to run" in err
    res = json.loads((tmp_path / "bad" / "results.json").read_text())
    assert [e["status"] for e in res["evaluations"]] == ["error", "ok", "ok"]
    assert "no-such-attack" in res["evaluations"][0]["error"]


def test_missing_figure_fails_with_a_reason() -> None:
    from aegis.workflows.audit import judge

    ev = parse_config(
        {**BASE, "evaluations": [{"type": "detect", "require": {"min_detection_auc": 0.5}}]}
    ).evaluations[0]
    (check,) = judge(ev, {"detection_auc": None})
    assert check["passed"] is False and "missing" in check["reason"]


def test_every_kind_of_evaluation_runs_end_to_end(
    cli: Cli, tmp_path: Path, model_path: str
) -> None:
    """The example with every evaluation uncommented, on digits: each sub-run writes its
    results and report, the audit writes its own, and its failed thresholds gate (exit 3)."""
    full = yaml.safe_load(re.sub(r"(?m)^  # (-|  )", r"  \1", EXAMPLE))
    full["models"] = [model_path]
    config = _write(tmp_path, full)
    out = tmp_path / "run"
    code, _, err = cli("audit", str(config), "--out", str(out))
    assert code in (EXIT_OK, EXIT_GATE), err
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "audit" and (out / "report.html").is_file()
    assert [e["type"] for e in res["evaluations"]] == [
        "attack", "detect", "defend", "certify", "poison", "extract", "membership",
    ]  # fmt: skip
    for e in res["evaluations"]:
        assert e["status"] == "ok", e
        sub = out / e["out_dir"]  # relative to the audit directory
        assert (sub / "results.json").is_file() and (sub / "report.html").is_file(), sub
    assert (code == EXIT_OK) == res["passed"]
