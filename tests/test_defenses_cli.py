"""``aegis certify`` and ``aegis detect`` end to end on tiny models and .npy data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aegis.cli import EXIT_ERROR, EXIT_OK


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_net, data) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("defenses")
    x, y = data
    model = d / "tiny.pt"
    torch.jit.save(torch.jit.trace(tiny_net, x[:2]), str(model))
    np.save(d / "x.npy", x.numpy())
    np.save(d / "y.npy", y.numpy())
    # a state dict with a factory, for the Mahalanobis detector's hooks (12×12, 4 classes)
    import _factories
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = _factories.make_cnn()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "cnn.safetensors"))
    g = torch.Generator().manual_seed(0)
    np.save(d / "x12.npy", torch.rand(60, 1, 12, 12, generator=g).numpy())
    np.save(d / "y12.npy", (torch.arange(60) % 4).numpy())
    return {"dir": d, "model": model, "x": d / "x.npy", "y": d / "y.npy"}


def test_certify_end_to_end(files, cli, tmp_path) -> None:
    out = tmp_path / "cert"
    args = [
        "certify", str(files["model"]), str(files["x"]), "--labels", str(files["y"]),
        "--sigma", "0.25", "--n0", "10", "--n", "60", "--alpha", "0.01", "--radii", "0,0.25,0.5",
        "--limit", "6", "--out", str(out),
    ]  # fmt: skip
    code, text, err = cli(*args)
    assert code == EXIT_OK, err
    assert "certified accuracy at L2 radius 0.25" in text and "abstain rate" in text
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == "aegis.results/1" and res["kind"] == "certification"
    c = res["certification"]
    assert c["n"] == 6 and [p["radius"] for p in c["certified_accuracy"]] == [0, 0.25, 0.5]
    assert len(res["certificates"]["radius"]) == len(res["certificates"]["correct"]) == 6
    assert res["config"]["smoothing"]["n0"] == 10
    # same seed, same numbers
    code, _, _ = cli(*args[:-1], str(tmp_path / "again"))
    assert code == EXIT_OK
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    for key in ("prediction", "radius", "p_lower", "count"):
        assert again["certificates"][key] == res["certificates"][key]


@pytest.mark.parametrize(
    "bad", [["--sigma", "0"], ["--n0", "100", "--n", "10"], ["--alpha", "1.5"], ["--radii", "x"]]
)
def test_certify_bad_input(files, cli, tmp_path, bad) -> None:
    out = tmp_path / "bad"
    code, _, err = cli(
        "certify", str(files["model"]), str(files["x"]), "--labels", str(files["y"]),
        "--out", str(out), *bad,
    )  # fmt: skip
    assert code == EXIT_ERROR and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert not (out / "results.json").exists()


def test_detect_squeeze_end_to_end(files, cli, tmp_path) -> None:
    out = tmp_path / "det"
    code, text, err = cli(
        "detect", str(files["model"]), str(files["x"]), "--labels", str(files["y"]),
        "--detector", "squeeze", "--attack", "pgd", "--eps", "0.3", "--steps", "10",
        "--limit", "30", "--adaptive-steps", "10", "--out", str(out),
    )  # fmt: skip
    assert code == EXIT_OK, err
    for line in ("ROC-AUC", "detection rate at 5% FPR", "non-adaptive:", "adaptive:"):
        assert line in text
    res = json.loads((out / "results.json").read_text())
    d = res["detection"]
    assert res["kind"] == "detection" and d["n"] == 30
    assert res["config"]["fit"]["n"] == 30  # the inputs after --limit
    assert {"non_adaptive", "adaptive", "worst_case"} <= set(d)


def test_detect_mahalanobis_with_factory(files, cli, tmp_path) -> None:
    d = files["dir"]
    code, text, err = cli(
        "detect", str(d / "cnn.safetensors"), str(d / "x12.npy"), "--labels", str(d / "y12.npy"),
        "--factory", "_factories:make_cnn", "--num-classes", "4", "--detector", "mahalanobis",
        "--eps", "0.1", "--steps", "5", "--limit", "20", "--no-adaptive",
        "--out", str(tmp_path / "m"),
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert "adaptive:" not in text.replace("non-adaptive:", "")


def test_detect_bad_input(files, cli, tmp_path) -> None:
    base = ["detect", str(files["model"]), str(files["x"]), "--labels", str(files["y"])]
    for extra in (["--detector", "nope"], ["--fpr", "2"], ["--limit", "60"],
                  ["--detector", "mahalanobis"]):  # fmt: skip
        code, _, err = cli(*base, "--out", str(tmp_path / "x"), *extra)
        assert code == EXIT_ERROR, extra
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def digits_pair(tmp_path_factory) -> tuple[Path, Path]:
    from aegis.zoo.train import train_reference

    d = tmp_path_factory.mktemp("defend")
    base = train_reference("digits", out_dir=d, epochs=3, progress=False)
    robust = train_reference(
        "digits", out_dir=d, epochs=3, defense="fast-at", eps=0.1, progress=False
    )
    return base.model_path, robust.model_path


def test_defend_one_table_for_base_trained_and_preprocessed(digits_pair, cli, tmp_path) -> None:
    base, robust = digits_pair
    out = tmp_path / "cmp"
    code, text, err = cli(
        "defend", str(base), "digits", "--model", str(robust), "--preprocess", "bit-depth:bits=4",
        "--attack", "pgd", "--eps", "0.1", "--limit", "60", "--out", str(out),
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert "upper bound on robust accuracy" in text and "MISLEADING" in text
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "defense-comparison"
    rows = {r["kind"]: r for r in res["rows"]}
    assert [r["kind"] for r in res["rows"]] == ["base", "trained", "preprocess"]
    side = json.loads(robust.with_suffix(".json").read_text())
    assert rows["trained"]["train_seconds"] == side["train_seconds"] > 0
    assert rows["trained"]["defense"]["name"] == "fast-at"
    for r in res["rows"]:
        assert r["n"] == 60 and 0 <= r["adversarial_accuracy"] <= r["clean_accuracy"] <= 1
    # Adversarial training buys robustness; preprocessing only looks robust when attacked naively.
    assert rows["trained"]["adversarial_accuracy"] > rows["base"]["adversarial_accuracy"]
    pre = rows["preprocess"]
    assert pre["naive_adversarial_accuracy"] > pre["adversarial_accuracy"] + 0.2
    assert pre["adversarial_accuracy"] <= rows["base"]["adversarial_accuracy"] + 0.1
    assert rows["base"]["naive_adversarial_accuracy"] is None


def test_defend_needs_something_to_compare(digits_pair, cli, tmp_path) -> None:
    code, _, err = cli("defend", str(digits_pair[0]), "digits", "--out", str(tmp_path / "x"))
    assert code == EXIT_ERROR
    assert "nothing to compare" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_defend_adds_detector_and_certified_columns(digits_pair, cli, tmp_path) -> None:
    base, robust = digits_pair
    out = tmp_path / "cmp2"
    code, text, err = cli(
        "defend", str(base), "digits", "--detector", "mahalanobis", "--smoothed", str(robust),
        "--sigma", "0.25", "--certify-samples", "100", "--certify-radii", "0.25,0.5",
        "--attack", "pgd", "--eps", "0.1", "--limit", "40", "--out", str(out),
    )  # fmt: skip
    assert code == EXIT_OK, err
    assert "det AUC" in text and "certified" in text
    res = json.loads((out / "results.json").read_text())
    rows = {r["kind"]: r for r in res["rows"]}
    assert [r["kind"] for r in res["rows"]] == ["base", "detector", "smoothed"]
    det = rows["detector"]
    assert det["n"] == 40 and 0.5 < det["detection_auc"] <= 1.0  # beats chance on plain PGD
    # the worst case of the attack and the detector-aware one, within the system's clean figure
    assert 0 <= det["adversarial_accuracy"] <= det["clean_accuracy"] <= 1
    assert det["clean_flagged"] is not None and det["clean_flagged"] <= 0.1  # the 5% FPR, fitted
    sm = rows["smoothed"]
    cert = sm["certified_accuracy"]
    assert list(cert) == ["0.25", "0.5"]
    assert cert["0.5"] <= cert["0.25"] <= sm["clean_accuracy"] <= 1
    assert sm["adversarial_accuracy"] is None and sm["train_seconds"] > 0
    assert 0 <= sm["clean_macro_recall"] <= 1
    assert res["config"]["smoothing"] == {"sigma": 0.25, "n": 100, "radii": [0.25, 0.5]}
