"""Files users bring, run the way a new user runs them: unlabeled attack sets (the seed's own
scenario, a Keras model ending in a softmax), models on 0-255 inputs, budgets as fractions of
the bounds' width, a missing normalization, `aegis inspect`, and a quiet console."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _factories import attack_argv
from torch import nn

from aegis.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from aegis.io.inputs import PREDICTED
from aegis.normalization import PRESETS, parse

HERE = Path(__file__).parent


def _results(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())


def _unlabeled(tiny_files: dict[str, Path], tmp_path: Path) -> list[str]:
    """The tiny-file argv without --labels."""
    argv = attack_argv(tiny_files, tmp_path / "run")
    i = argv.index("--labels")
    return argv[:i] + argv[i + 2 :]


# -- unlabeled attack sets ----------------------------------------------------------------------


def test_targeted_attack_without_labels(cli, tiny_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    argv = _unlabeled(tiny_files, tmp_path)
    code, out, err = cli(*argv, "--target", "2", "--success-threshold", "0.9", "--eps", "0.3")
    assert code == EXIT_OK, err
    res = _results(tmp_path / "run")
    m = res["metrics"]
    assert m["clean_accuracy"] is None and m["clean"]["macro_f1"] is None
    assert m["labels"].startswith("n/a: no labels") and "n/a: no labels" in out
    assert m["success"]["attacked"] > 0 and m["success"]["rate"] is not None
    assert res["data"]["labels"] == res["data"]["provenance"]["labels"] == PREDICTED
    assert res["config"]["targets"] == 2
    assert "n/a" in out
    assert "reach their target class" in m["verdict"]["text"]


def test_untargeted_attack_without_labels_uses_the_predictions(
    cli: Any, tiny_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code, _, err = cli(*_unlabeled(tiny_files, tmp_path), "--eps", "0.3")
    assert code == EXIT_OK, err
    res = _results(tmp_path / "run")
    rec = res["records"]
    assert rec["y"] == rec["clean_pred"]  # the model's own predictions stood in
    assert "own clean predictions" in caplog.text  # said on the console (a warning)
    assert "change the model's prediction" in res["metrics"]["verdict"]["text"]
    assert res["metrics"]["predictions_kept"] is not None


def test_the_seeds_flow_keras_softmax_model_without_labels(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Keras file + attack_dataset.npy + --target 5 + --success-threshold 0.9, no labels."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras was imported with another backend")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.save(str(tmp_path / "model.h5"))
    x = np.random.default_rng(0).random((40, 8, 8, 1)).astype(np.float32)
    np.save(tmp_path / "attack_dataset.npy", x)
    out = tmp_path / "run"
    code, _, err = cli(
        "attack", str(tmp_path / "model.h5"), str(tmp_path / "attack_dataset.npy"),
        "--attack", "pgd", "--target", "5", "--success-threshold", "0.9", "--eps", "0.3",
        "--steps", "20", "--out", str(out),
    )  # fmt: skip
    assert code == EXIT_OK, err
    res = _results(out)
    assert res["config"]["targets"] == 5 and res["metrics"]["verdict"]["threshold"] == 0.9
    assert res["metrics"]["verdict"]["reached"] in (True, False)
    assert res["data"]["provenance"]["labels"] == PREDICTED
    assert "UserWarning" not in err  # other libraries' warnings stay off the console


# -- bounds, scale and budgets ---------------------------------------------------------------


class _On255(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x / 255.0)


def test_a_0_255_model_sees_0_255_and_budgets_are_fractions(
    cli,
    tiny_net: nn.Module,
    tiny_files,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """uint8 data for a model on raw pixels stays 0-255 (the predictions equal the model run
    by hand on its own scale), and --eps 8/255 is 8 grey levels: the records equal those of
    the same network on [0, 1] attacked with the same fraction."""
    x01 = np.load(tiny_files["x"])
    pixels = np.round(x01 * 255).astype(np.uint8)
    np.save(tmp_path / "x255.npy", pixels)
    raw = tmp_path / "raw.pt"
    torch.jit.save(torch.jit.trace(_On255(tiny_net).eval(), torch.zeros(2, 1, 8, 8)), str(raw))
    unit = tmp_path / "unit.pt"
    torch.jit.save(torch.jit.trace(tiny_net.eval(), torch.zeros(2, 1, 8, 8)), str(unit))
    common = ["--labels", str(tiny_files["y"]), "--eps", "8/255", "--steps", "5"]
    code, text, err = cli(
        "attack", str(raw), str(tmp_path / "x255.npy"), "--bounds", "0,255",
        "--out", str(tmp_path / "a"), *common,
    )  # fmt: skip
    assert code == EXIT_OK, err
    code, _, err = cli(
        "attack", str(unit), str(tmp_path / "x255.npy"), "--out", str(tmp_path / "b"), *common
    )
    assert code == EXIT_OK, err
    a, b = _results(tmp_path / "a"), _results(tmp_path / "b")
    by_hand = _On255(tiny_net)(torch.from_numpy(pixels.astype(np.float32))).argmax(1)
    assert a["records"]["clean_pred"] == by_hand.tolist()
    assert a["records"]["adv_pred"] == b["records"]["adv_pred"]
    assert a["config"]["threat"]["eps"] == pytest.approx(8 / 255)
    assert a["config"]["threat"]["eps_model_units"] == pytest.approx(8.0)
    assert "(= 8 in the model's units)" in " ".join(text.split())
    assert a["data"]["provenance"]["original_range"] == [float(pixels.min()), float(pixels.max())]
    with np.load(tmp_path / "a" / "samples.npz") as s:  # stored on the model's own scale
        assert np.array_equal(s["x"], pixels.astype(np.float32))
        assert np.abs(s["x_adv"] - s["x"]).max() <= 8 + 1e-3


def test_data_outside_the_bounds_names_both_ranges(cli, tiny_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wide = np.load(tiny_files["x"]) * 3 - 1
    np.save(tmp_path / "wide.npy", wide.astype(np.float32))
    argv = attack_argv(tiny_files, tmp_path / "run")
    argv[2] = str(tmp_path / "wide.npy")
    code, _, err = cli(*argv, "--scale", "none")
    assert code == EXIT_ERROR
    assert "outside the model's bounds [0, 1]" in err and "[-1" in err
    assert not (tmp_path / "run").exists()


def test_an_linf_budget_over_the_width_is_a_usage_error(cli, tiny_files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli(*attack_argv(tiny_files, tmp_path / "run", "--eps", "8"))
    assert code == EXIT_USAGE and "over the bounds' width" in err and "8/255" in err


# -- normalization ------------------------------------------------------------------------------


def test_presets_by_name() -> None:
    assert parse("cifar10", "mean") == PRESETS["cifar10"][0]
    assert parse("ImageNet", "std") == PRESETS["imagenet"][1]
    assert parse("0.5,0.4", "mean") == (0.5, 0.4)
    with pytest.raises(ValueError, match="preset"):
        parse("cifar11", "mean")


class _Normed(nn.Module):
    """A network trained behind Normalize(0.5, 0.5): it expects (x - 0.5) / 0.5."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner(z * 0.5 + 0.5)


def test_a_missing_normalization_is_found_and_inspect_keeps_it(
    cli: Any, digits_model: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clf, x, y = digits_model
    model = tmp_path / "normed.pt"
    net = _Normed(clf.module).eval()
    torch.jit.save(torch.jit.trace(net, x[:2]), str(model))
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    data = ["--labels", str(tmp_path / "y.npy")]
    code, _, err = cli(
        "attack", str(model), str(tmp_path / "x.npy"), *data, "--eps", "0.1", "--steps", "3",
        "--out", str(tmp_path / "a"),
    )  # fmt: skip
    assert code == EXIT_OK, err
    flag = next(f for f in _results(tmp_path / "a")["sanity"] if f["name"] == "normalization")
    assert flag["flagged"] and "--mean half --std half" in flag["advice"]
    assert any("normalization:" in m for m in caplog.messages)  # warned on the console

    code, text, err = cli("inspect", str(model), str(tmp_path / "x.npy"), *data, "--write-sidecar")
    assert code == EXIT_OK, err
    assert "white-box" in text and "hint: clean accuracy is" in text
    side = json.loads(model.with_suffix(".json").read_text())
    assert side["mean"] == [0.5] and side["std"] == [0.5]
    code, _, err = cli(
        "attack", str(model), str(tmp_path / "x.npy"), *data, "--eps", "0.1", "--steps", "3",
        "--out", str(tmp_path / "b"),
    )  # fmt: skip
    assert code == EXIT_OK, err
    res = _results(tmp_path / "b")
    assert res["model"]["provenance"]["mean"] == "sidecar"
    assert not any(f["flagged"] for f in res["sanity"] if f["name"] == "normalization")
    assert res["metrics"]["clean_accuracy"] > 0.9


def test_inspect_without_data(cli, tiny_files) -> None:  # type: ignore[no-untyped-def]
    code, text, err = cli("inspect", str(tiny_files["model"]), "--input-shape", "1,8,8")
    assert code == EXIT_OK, err
    for word in ("format:", "torchscript", "1×8×8", "classes:", "bounds:", "white-box"):
        assert word in text


# -- a quiet console ---------------------------------------------------------------------------


def test_other_libraries_warnings_go_to_the_log(cli, tiny_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file

    sys.path.insert(0, str(HERE))
    from _factories import make_noisy

    weights = tmp_path / "noisy.safetensors"
    save_file(make_noisy().state_dict(), str(weights))
    argv = attack_argv(tiny_files, tmp_path / "run", "--factory", "_factories:make_noisy")
    argv[1] = str(weights)
    code, _, err = cli(*argv, "--eps", "0.1", "--steps", "2", "--step-size", "1/20")
    assert code == EXIT_OK, err
    assert "chatter" not in err
    assert _results(tmp_path / "run")["config"]["attack"]["step_size"] == 0.05
    assert "third-party chatter" in (tmp_path / "run" / "aegis.log").read_text()
