"""The CLI end to end on a tiny TorchScript model and .npy data, including every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _factories import attack_argv

from aegis.cli import EXIT_ERROR, EXIT_GATE, EXIT_OK, EXIT_USAGE


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_net, data) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    x, y = data
    model = d / "tiny.pt"
    torch.jit.save(torch.jit.trace(tiny_net, x[:2]), str(model))
    # The user's attack set: NHWC uint8, as image data usually comes.
    nhwc = np.round(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    np.save(d / "attack_dataset.npy", nhwc)
    np.save(d / "labels.npy", y.numpy())
    return {"dir": d, "model": model, "x": d / "attack_dataset.npy", "y": d / "labels.npy"}


def test_targeted_scenario_end_to_end(files, cli, tmp_path) -> None:
    out = tmp_path / "run"
    code, text, err = cli(
        *attack_argv(
            files,
            out,
            "--attack",
            "pgd",
            "--eps",
            "0.6",
            "--step",
            "0.01",
            "--iterations",
            "100",
            "--target",
            "1",
            "--success-threshold",
            "0.9",
        ),
    )
    assert code == EXIT_OK, err
    assert "verdict: attack SUCCEEDS" in text and "excluded (true label = target)" in text
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == "aegis.results/1"
    assert res["config"]["attack"]["steps"] == 100 and res["config"]["attack"]["step_size"] == 0.01
    assert res["config"]["targets"] == 1 and res["config"]["threat"]["targeted"] is True
    assert res["metrics"]["success"]["excluded_target"] == 20
    assert res["data"]["provenance"]  # layout and scaling are explicit
    assert (out / "grid.png").stat().st_size > 1000
    with np.load(out / "samples.npz") as z:
        assert z["x_adv"].shape == (60, 1, 8, 8)
        assert np.abs(z["x_adv"] - z["x"]).max() <= 0.6 + 1e-6


def test_gate_exit_code(files, cli, tmp_path) -> None:
    args = attack_argv(
        files,
        tmp_path / "g",
        "--eps",
        "0.6",
        "--steps",
        "20",
        "--success-threshold",
        "0.5",
        "--gate",
    )
    code, text, _ = cli(*args)
    assert code == EXIT_GATE and "SUCCEEDS" in text
    code, text, _ = cli(
        *attack_argv(
            files,
            tmp_path / "h",
            "--eps",
            "0.01",
            "--steps",
            "2",
            "--success-threshold",
            "0.9",
            "--gate",
        ),
    )
    assert code == EXIT_OK and "FAILS" in text


def test_untargeted_l2_and_l1(files, cli, tmp_path) -> None:
    for norm, eps in (("l2", "2"), ("l1", "10")):
        code, text, err = cli(
            *attack_argv(
                files, tmp_path / norm, "--norm", norm, "--eps", eps, "--attack", "mifgsm"
            ),
        )
        assert code == EXIT_OK, err
        assert "success rate" in text


def _bad(files, tmp: Path, kind: str) -> list[str]:
    """The command line for one kind of bad input (writing the bad file it needs)."""
    out = tmp / "bad"
    x = np.load(files["x"])
    y = np.load(files["y"])
    model, data, labels = files["model"], files["x"], files["y"]
    if kind == "missing":
        return ["attack", str(files["dir"] / "nope.onnx"), str(data), "--out", str(out)]
    bad_x = {
        "shape": lambda: x[:, :6, :6],
        "channels": lambda: np.repeat(x, 3, axis=3),
        "nan": lambda: np.where(np.arange(x.size).reshape(x.shape) == 0, np.nan, x / 255),
        "range": lambda: x.astype(np.float32) * 4.0 - 7.5,
    }
    bad_y = {"labels-range": lambda: y + 7, "labels-length": lambda: y[:10]}
    flags = {
        "output-width": ["--num-classes", "5"],
        "unknown-attack": ["--attack", "pgdd"],
        "eps": ["--eps", "-0.1"],
        "steps": ["--steps", "0"],
        "target": ["--target", "3"],
        "threshold": ["--success-threshold", "90"],
        "eps-text": ["--eps", "0.1;0.2"],
        "param": ["--param", "steps"],
        "param-unknown": ["-p", "overshoot=3"],
        "suite-override": ["--attack", "standard", "--steps", "5"],
    }
    if kind in bad_x:
        data = tmp / "x.npy"
        np.save(data, bad_x[kind]())
    elif kind in bad_y:
        labels = tmp / "y.npy"
        np.save(labels, bad_y[kind]())
    elif kind == "corrupt":
        model = tmp / "m.pt"
        model.write_bytes(files["model"].read_bytes()[:300])
    elif kind not in flags:
        raise AssertionError(kind)
    return [
        "attack", str(model), str(data), "--labels", str(labels), "--input-shape", "1,8,8",
        "--out", str(out), *flags.get(kind, []),
    ]  # fmt: skip


BAD = {
    "shape": "shape",
    "channels": "channels",
    "nan": "NaN",
    "range": "--scale",
    "labels-range": "labels",
    "labels-length": "60",
    "output-width": "classes",
    "corrupt": "corrupt",
    "unknown-attack": "did you mean 'pgd'",
    "eps": "eps must be a number >= 0",
    "steps": "steps must be >= 1",
    "target": r"target class must be in [0, 2]",
    "threshold": "0.9 for 90%",
    "missing": "no such model file",
    "eps-text": "comma-separated numbers",
    "param": "NAME=VALUE",
    "param-unknown": "has no parameter overshoot",
    "suite-override": "published budgets",
}


USAGE = {
    "unknown-attack", "eps", "steps", "threshold", "eps-text", "param", "param-unknown",
    "suite-override",
}  # fmt: skip
"""Bad option values: usage errors (exit 2), found before any file is read or written."""


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input_one_line_exit_1_or_2_nothing_written(files, cli, tmp_path, kind) -> None:
    code, _, err = cli(*_bad(files, tmp_path, kind))
    assert code == (EXIT_USAGE if kind in USAGE else EXIT_ERROR), err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "unexpected" not in lines[0]
    assert BAD[kind].lower() in lines[0].lower(), lines[0]
    assert not (tmp_path / "bad" / "results.json").exists()


def test_listing_commands(cli) -> None:
    code, text, _ = cli("attacks")
    assert code == EXIT_OK
    for name in ("fgsm", "bim", "pgd", "mifgsm", "apgd-ce", "standard", "fast", "minimal"):
        assert name in text
    code, text, _ = cli("datasets")
    assert code == EXIT_OK and "mnist" in text and "digits" in text


def test_help_reads_like_a_manual(cli) -> None:
    code, text, _ = cli("attack", "--help")
    assert code == EXIT_OK
    for word in (
        "--iterations",
        "--step",
        "--target",
        "--success-threshold",
        "--gate",
        "--unsafe-pickle",
    ):
        assert word in text


def test_entry_point_subprocess(files, tmp_path) -> None:
    exe = Path(sys.executable).with_name("aegis")
    proc = subprocess.run(
        [str(exe), *attack_argv(files, tmp_path / "sub", "--attack", "fgsm", "--eps", "0.1")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "verdict:" in proc.stdout


def test_ensemble_on_the_command_line(files, cli, tmp_path) -> None:
    out = tmp_path / "ens"
    code, _, err = cli(
        *attack_argv(files, out, "--attack", "fgsm,pgd", "--eps", "0.3", "--steps", "10")
    )
    assert code == EXIT_OK, err
    res = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in res["config"]["attack"]["members"]] == ["fgsm", "pgd"]
    assert res["config"]["attack"]["members"][1]["steps"] == 10
    assert sum(res["metrics"]["success"]["by_attack"]) == res["metrics"]["success"]["successes"]


def test_eps_sweep_and_params(files, cli, tmp_path) -> None:
    out = tmp_path / "sweep"
    code, text, err = cli(
        *attack_argv(files, out, "--attack", "pgd", "--eps", "0.3,0.05,0.15", "-p", "steps=8")
    )
    assert code == EXIT_OK, err
    res = json.loads((out / "results.json").read_text())
    assert [p["eps"] for p in res["sweep"]] == [0.05, 0.15, 0.3]
    assert res["config"]["threat"]["eps"] == 0.3  # the headline is the largest budget
    assert res["config"]["attack"]["steps"] == 8
    accs = [p["metrics"]["adversarial_accuracy"] for p in res["sweep"]]
    assert accs[0] >= accs[-1]
    assert all(len(p["records"]["y"]) == 60 for p in res["sweep"])
    assert (out / "curve.png").stat().st_size > 1000 and res["files"]["curve"] == "curve.png"
    assert "accuracy under attack" in text and "0.15" in text
    assert {f["name"] for f in res["sanity"]} >= {"probabilities", "eps-not-monotonic"}
