"""Every workflow returns one typed result (:class:`aegis.api.WorkflowResult`): its kind, the
results exactly as ``results.json`` holds them, the run directory and the files written there,
and a read-only mapping over the results (so ``res["key"]`` reads as it did from a dict)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from aegis.api import WorkflowResult
from aegis.io import rundir
from aegis.model import Classifier, ModelInfo


@pytest.fixture()
def clf(digits_net: nn.Module) -> Classifier:
    return Classifier(digits_net, ModelInfo(num_classes=10, input_shape=(1, 8, 8)), name="mlp")


@pytest.fixture(scope="module")
def model_file(digits_net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("workflow-results") / "mlp.pt"
    torch.jit.script(digits_net).save(str(path))
    return path


def _canonical(value: Any) -> str:
    """JSON text as results.json stores it (numpy → lists, NaN kept), keys sorted."""
    stored = json.loads(json.dumps(value, default=rundir.json_default, allow_nan=True))
    return json.dumps(stored, sort_keys=True, allow_nan=True)


def _mapping(res: Any, kind: str) -> None:
    """A WorkflowResult of ``kind``, read like the results dict it holds, and read-only."""
    assert isinstance(res, WorkflowResult)
    assert res.kind == kind
    assert dict(res) == res.results and res == res.results and len(res) == len(res.results)
    key = next(iter(res))
    assert key in res and res.get(key) is res.results[key] and res.get("no-such-key") is None
    with pytest.raises(TypeError):
        res[key] = "x"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.kind = "x"  # type: ignore[misc]


def _check(res: Any, kind: str, out: Path | None, *files: str) -> None:
    """A WorkflowResult of ``kind``; with ``out``, its results are those of results.json (but
    ``out_dir``, which is not stored) and its paths name existing files, ``files`` among them."""
    _mapping(res, kind)
    assert res["schema"] == rundir.SCHEMA
    if out is None:
        assert res.out_dir is None and res.paths == {} and "out_dir" not in res
        return
    assert res.out_dir == out and res["out_dir"] == str(out)
    stored = rundir.read_results(out)
    shown = {k: v for k, v in res.results.items() if k not in ("out_dir", "reused")}
    assert _canonical(shown) == _canonical(stored)
    assert {"results", "report", *files} <= set(res.paths)
    assert res.paths["results"] == out / "results.json"
    for path in res.paths.values():
        assert path.is_file() and path.parent == out, path


def test_detect(clf: Classifier, tmp_path: Path) -> None:
    from aegis.workflows.detect import run_detect

    kw: dict[str, Any] = {"detector": "squeeze", "eps": 0.1, "steps": 3, "fit_limit": 60}
    res = run_detect(clf, "digits", limit=16, adaptive_steps=3, out=tmp_path / "d", **kw)
    _check(res, "detect", tmp_path / "d")
    assert res.records is None and res["kind"] == "detection"


def test_certify(clf: Classifier, tmp_path: Path) -> None:
    from aegis.defenses.certification import Smoothing
    from aegis.workflows.certify import run_certify

    smoothing = Smoothing(sigma=0.25, n0=10, n=30)
    res = run_certify(clf, "digits", smoothing=smoothing, radii=(0, 0.25), limit=8)
    _check(res, "certify", None)
    res = run_certify(clf, "digits", smoothing=smoothing, limit=8, out=tmp_path / "c")
    _check(res, "certify", tmp_path / "c")
    assert res.records is not None
    assert res.records.to_dict() == res["certificates"]


def test_defend(model_file: Path, tmp_path: Path) -> None:
    from aegis.workflows.defend import compare_defenses

    out = tmp_path / "def"
    res = compare_defenses(
        model_file, "digits", preprocess=["bit-depth:bits=4"], attack="fgsm", eps=0.1, limit=12
    )
    _check(res, "defend", None)
    again = compare_defenses(
        model_file, "digits", preprocess=["bit-depth:bits=4"], attack="fgsm", eps=0.1, limit=12,
        out=out,
    )  # fmt: skip
    _check(again, "defend", out)
    assert [r["kind"] for r in again["rows"]] == ["base", "preprocess"]


def test_poison(tmp_path: Path) -> None:
    from aegis.workflows.poison import run_poisoning

    res = run_poisoning(
        "digits", defenses=("spectral",), arch="tiny_mlp", epochs=1, train_limit=200,
        test_limit=50, out=tmp_path / "p",
    )  # fmt: skip
    _check(res, "poison", tmp_path / "p")
    assert int(res.records.mask.sum()) == res["poisoning"]["n_poisoned"] == 20
    assert res["config"]["training"] == {
        "arch": "tiny_mlp", "epochs": 1, "lr": 2e-3, "batch_size": 64, "augment_shift": 0,
        "seed": 0, "trainer": "aegis.zoo.train.train_classifier",
    }  # fmt: skip


def test_extract(clf: Classifier, tmp_path: Path) -> None:
    from aegis.leakage import SubstituteRecipe
    from aegis.workflows.extract import run_extraction

    recipe = SubstituteRecipe(arch="tiny_mlp", epochs=2, min_steps=10, lr=5e-3)
    kw: dict[str, Any] = {"budgets": [30, 60], "outputs": ["labels"], "recipe": recipe}
    res = run_extraction(
        clf, "digits", steps=2, transfer_limit=8, limit=40, out=tmp_path / "e", **kw
    )
    _check(res, "extract", tmp_path / "e", "fidelity_curve")
    assert res.paths["fidelity_curve"].name == "fidelity.png"
    assert [r["budget"] for r in res["extraction"]["runs"]] == [30, 60]
    assert res["extraction"]["curves"]["labels"] == [
        [r["budget"], r["fidelity"]] for r in res["extraction"]["runs"]
    ]


def test_membership(tmp_path: Path) -> None:
    from aegis.leakage import TargetRecipe
    from aegis.workflows.membership import run_membership

    recipe = TargetRecipe(arch="tiny_mlp", epochs=2, lr=5e-3)
    res = run_membership(
        "digits", recipe=recipe, variants=["base"], shadows=1, limit=40, out=tmp_path / "m"
    )
    _check(res, "membership", tmp_path / "m")
    members, scores = res.records["members"], res.records["scores"]
    assert members.shape == (40,) and int(members.sum()) == res["config"]["members"]
    assert set(scores) == {"base"} and all(len(s) == 40 for s in scores["base"].values())


def test_audit(model_file: Path, tmp_path: Path) -> None:
    from aegis.audit.config import parse_config
    from aegis.workflows.audit import run_audit

    cfg = parse_config(
        {
            "models": [str(model_file)],
            "data": "digits",
            "limit": 8,
            "evaluations": [
                {"type": "attack", "attack": "fgsm", "eps": 0.1, "require": {"max_success_rate": 1}}
            ],
        }
    )
    res = run_audit(cfg, tmp_path / "a")
    _check(res, "audit", tmp_path / "a")
    assert res["reused"] == [] and res["passed"] is True
    assert (tmp_path / "a" / res["evaluations"][0]["out_dir"] / "results.json").is_file()


def test_inspect(model_file: Path, tmp_path: Path) -> None:
    from aegis.workflows.inspect import inspect_model

    res = inspect_model(model_file, "digits", limit=32)
    _mapping(res, "inspect")
    assert res.out_dir is None and res.paths == {} and res.records is None
    assert res["clean_accuracy"] is not None and res["n"] == 32
    copy = tmp_path / "mlp.pt"
    shutil.copy(model_file, copy)
    written = inspect_model(copy, "digits", limit=32, write=True)
    assert written.paths == {"sidecar": copy.with_suffix(".json")}
    assert written.paths["sidecar"].is_file()
    assert written["sidecar_written"] == str(written.paths["sidecar"])
    assert dict(written)["num_classes"] == 10
