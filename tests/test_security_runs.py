"""Run directories and option values, tried as an attacker (or an unlucky user) would: no run
loses or mixes another's work, a swapped model is never resumed, no temporary file survives a
failed write, and every bad option value is one line with exit code 2 before anything is
written."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _factories import attack_argv, hardmax_onnx
from torch import nn

from aegis.api import run_attack
from aegis.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from aegis.errors import AegisError, ConfigError
from aegis.io.claim import LOCK
from aegis.params import coerce


class Interrupt(Exception):
    """Stands for a kill after the first batch: the batches written so far stay."""


def _stop_after_first_batch(done: int, total: int) -> None:
    if done:
        raise Interrupt


def _batches(out: Path) -> list[Path]:
    return sorted((out / "progress").rglob("batch-*.npz"))


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "unexpected" not in lines[0], lines[0]
    return lines[0]


# -- a model swapped before --resume ----------------------------------------------------------


def test_a_swapped_query_only_model_is_not_resumed(tmp_path: Path) -> None:
    """The checkpoint key hashes the model file's bytes: a query-only model has no weights in
    torch to hash, and its file name alone let a replaced model reuse the old batches."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model, out = tmp_path / "net.onnx", tmp_path / "run"
    x = np.random.default_rng(1).random((24, 1, 4, 4)).astype(np.float32)
    y = np.arange(24) % 4
    kw = dict(attack="square", eps=0.3, queries=20, batch_size=6, out=out)
    hardmax_onnx(model, seed=0)
    with pytest.warns(), pytest.raises(Interrupt):
        run_attack(str(model), (x, y), progress=_stop_after_first_batch, **kw)  # type: ignore[arg-type]
    assert len(_batches(out)) == 1

    hardmax_onnx(model, seed=5)  # the same name, another model
    with pytest.warns():
        resumed = run_attack(str(model), (x, y), resume=True, **kw)  # type: ignore[arg-type]
        fresh = run_attack(str(model), (x, y), **{**kw, "out": tmp_path / "fresh"})  # type: ignore[arg-type]
    np.testing.assert_array_equal(
        resumed.evaluation.records.clean_pred, fresh.evaluation.records.clean_pred
    )
    np.testing.assert_array_equal(
        resumed.evaluation.records.adv_pred, fresh.evaluation.records.adv_pred
    )


class _Flip(nn.Module):
    def __init__(self, flip: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
        self.flip = flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flip(-1) if self.flip else x)


def test_a_swapped_torchscript_model_with_the_same_weights_is_not_resumed(
    tmp_path: Path,
) -> None:
    """Two TorchScript files with identical state dicts but other code: the weights alone do
    not identify a model, its file does."""
    torch.manual_seed(0)
    a, b = _Flip(False).eval(), _Flip(True).eval()
    b.load_state_dict(a.state_dict())
    model, out = tmp_path / "net.pt", tmp_path / "run"
    x = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = a(x).argmax(1).numpy()
    kw = dict(attack="pgd", eps=0.2, steps=3, batch_size=6, out=out)
    torch.jit.save(torch.jit.script(a), str(model))
    with pytest.raises(Interrupt):
        run_attack(str(model), (x.numpy(), y), progress=_stop_after_first_batch, **kw)  # type: ignore[arg-type]
    torch.jit.save(torch.jit.script(b), str(model))
    resumed = run_attack(str(model), (x.numpy(), y), resume=True, **kw)  # type: ignore[arg-type]
    expected = b(x).argmax(1).numpy()
    np.testing.assert_array_equal(resumed.evaluation.records.clean_pred, expected)
    assert not (expected == y).all()  # the two models do disagree: the check can fail


# -- the run directory ------------------------------------------------------------------------


def _killed_run(cli, tiny_files: dict[str, Path], out: Path) -> int:  # type: ignore[no-untyped-def]
    """A run stopped after its first batches, as a kill would leave it."""
    with pytest.raises(Interrupt):
        run_attack(
            str(tiny_files["model"]),
            str(tiny_files["x"]),
            labels=str(tiny_files["y"]),
            model_options={"input_shape": "1,8,8"},
            eps=0.1,
            steps=2,
            batch_size=16,
            out=out,
            progress=_stop_after_first_batch,
        )
    return len(_batches(out))


def test_a_rerun_without_resume_keeps_the_checkpoints(cli, tiny_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    before = _killed_run(cli, tiny_files, out)
    assert before >= 1
    code, _, err = cli(*attack_argv(tiny_files, out, "--eps", "0.1", "--steps", "2"))
    assert code == EXIT_ERROR
    assert "--resume" in _one_line(err) and "--overwrite" in err
    assert len(_batches(out)) == before  # nothing deleted
    code, _, err = cli(*attack_argv(tiny_files, out, "--eps", "0.1", "--steps", "2", "--overwrite"))
    assert code == EXIT_OK, err
    assert (out / "results.json").is_file() and not (out / "progress").exists()


def test_a_second_run_into_the_same_out_refuses(cli, tiny_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    before = _killed_run(cli, tiny_files, out)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = {"pid": other.pid, "host": socket.gethostname(), "started": "now"}
        (out / LOCK).write_text(json.dumps(owner))
        for extra in ((), ("--resume",), ("--overwrite",)):
            code, _, err = cli(
                *attack_argv(tiny_files, out, "--eps", "0.1", "--steps", "2", *extra)
            )
            assert code == EXIT_ERROR
            assert f"PID {other.pid}" in _one_line(err) and "another aegis run" in err
            assert len(_batches(out)) == before  # the other run's work is untouched
    finally:
        other.kill()
        other.wait()
    # its process is gone: the lock is stale and taken over
    code, _, err = cli(*attack_argv(tiny_files, out, "--eps", "0.1", "--steps", "2", "--resume"))
    assert code == EXIT_OK, err
    assert not (out / LOCK).exists()  # released when the run ended


def test_a_finished_run_is_replaced_only_with_overwrite(cli, tiny_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    code, _, err = cli(*attack_argv(tiny_files, out, "--attack", "fmn", "--norm", "l2"))
    assert code == EXIT_OK, err
    assert (out / "curve.png").is_file()
    (out / "notes.txt").write_text("mine")
    code, _, err = cli(*attack_argv(tiny_files, out, "--eps", "0.1"))
    assert code == EXIT_ERROR and "--overwrite" in _one_line(err)
    assert json.loads((out / "results.json").read_text())["config"]["minimal_norm"]
    code, _, err = cli(*attack_argv(tiny_files, out, "--eps", "0.1", "--overwrite"))
    assert code == EXIT_OK, err
    assert not (out / "curve.png").exists()  # the old run's picture is gone
    assert (out / "notes.txt").read_text() == "mine"  # a file aegis did not write stays
    assert not json.loads((out / "results.json").read_text())["config"]["minimal_norm"]


@pytest.mark.parametrize("where", ["samples", "grid", "results"])
def test_a_full_disk_leaves_no_temporary_file(
    cli,
    tiny_files,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,  # type: ignore[no-untyped-def]
) -> None:
    def full(path: object, *args: object, **kwargs: object) -> None:
        Path(str(path)).write_bytes(b"half")  # a part was written before the disk filled
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "samples":
        monkeypatch.setattr(np, "savez_compressed", full)
    elif where == "grid":
        from matplotlib.figure import Figure

        monkeypatch.setattr(Figure, "savefig", lambda self, path, **kw: full(path))
    else:
        monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: full(self))
    out = tmp_path / "run"
    code, _, err = cli(*attack_argv(tiny_files, out, "--eps", "0.1", "--steps", "2"))
    assert code == EXIT_ERROR
    assert "No space left" in _one_line(err) and "free some space" in err
    left = [p.name for p in out.rglob("*") if ".tmp" in p.name]
    assert left == [] and not (out / LOCK).exists()


def test_a_read_only_out_is_one_line(cli, tiny_files, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real_mkdir = Path.mkdir

    def read_only(self: Path, *args: object, **kwargs: object) -> None:
        if self.name == "run":
            raise OSError(errno.EROFS, "Read-only file system")
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", read_only)
    code, _, err = cli(*attack_argv(tiny_files, tmp_path / "run", "--eps", "0.1"))
    assert code == EXIT_ERROR
    assert "Read-only" in _one_line(err) and "writable --out" in err


# -- option values: one line, exit 2, nothing written ------------------------------------------

USAGE = {
    ("-p", "steps=abc"): "steps must be an integer, got 'abc'",
    ("-p", "steps=2.5"): "steps must be an integer, got '2.5'",
    ("-p", "random_start=maybe"): "random_start must be true or false",
    ("-p", "steps"): "NAME=VALUE",
    ("--seed", "-1"): "--seed must be an integer in [0, 2**63 - 1]",
    ("--device", "foo"): "not a torch device",
    ("--eps", "inf"): "only for minimal-norm attacks",
    ("--eps", "nan"): "eps must be a number >= 0",
    ("--limit", "0"): "--limit must be >= 1",
    ("--resume", "--overwrite"): "drop one",
}


@pytest.mark.parametrize("extra", sorted(USAGE), ids=lambda e: " ".join(e))
def test_bad_option_values_are_usage_errors(cli, tiny_files, tmp_path: Path, extra) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    code, _, err = cli(*attack_argv(tiny_files, out, *extra))
    assert code == EXIT_USAGE, err
    assert USAGE[extra] in _one_line(err)
    assert not out.exists()  # checked before anything was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_on_a_cpu_build_is_a_usage_error(cli, tiny_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli(*attack_argv(tiny_files, tmp_path / "run", "--device", "cuda"))
    assert code == EXIT_USAGE and "--device cpu" in _one_line(err)


def test_out_that_is_a_file_is_a_usage_error(cli, tiny_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    code, _, err = cli(*attack_argv(tiny_files, out))
    assert code == EXIT_USAGE and "is a file" in _one_line(err)
    assert out.read_text() == "keep me"


# -- coercion by declared type ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("40", int, 40), ("4e1", int, 40), (40.0, int, 40), ("0.5", float, 0.5), (1, float, 1.0),
        ("true", bool, True), ("No", bool, False), (True, bool, True), ("none", float | None, None),
        (None, int | None, None), (" pgd ", str, "pgd"), ("inf", float, float("inf")),
    ],
)  # fmt: skip
def test_coerce_by_declared_type(value: object, kind: object, expected: object) -> None:
    assert coerce("pgd", "x", value, kind) == expected


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("abc", int), ("2.5", int), (2.5, int), (True, int), (False, float), ("nan", float),
        (float("nan"), float), ("maybe", bool), (2, bool), (3, str), (None, int), ("inf", int),
    ],
)  # fmt: skip
def test_coerce_refuses_what_does_not_fit(value: object, kind: object) -> None:
    with pytest.raises(ConfigError, match=r"^pgd: x must be"):
        coerce("pgd", "x", value, kind)


def test_params_from_a_config_are_coerced_too() -> None:
    from aegis.registry import create

    assert create("pgd", steps="7", random_start="false").steps == 7  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="random_start must be true or false"):
        create("pgd", random_start="maybe")
    with pytest.raises(AegisError, match="steps must be an integer"):
        create("pgd", steps=True)


def test_lock_is_released_when_a_run_fails(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(AegisError):
        run_attack("missing.pt", (np.zeros((2, 1, 8, 8), np.float32), np.zeros(2, int)), out=out)
    assert not out.exists()  # created for the run, left empty: removed again
    assert os.listdir(tmp_path) == []


def test_device_auto_is_the_cpu_without_a_gpu(cli, tiny_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from aegis.cli.options import _device

    expected = "cuda" if torch.cuda.is_available() else None
    assert _device("auto") == _device(None) == expected
    code, _, err = cli(*attack_argv(tiny_files, tmp_path / "run", "--device", "auto"))
    assert code == EXIT_OK, err
    device = json.loads((tmp_path / "run" / "results.json").read_text())["model"]["device"]
    assert device == ("cuda:0" if expected else "cpu")
