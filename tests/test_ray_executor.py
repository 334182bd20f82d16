"""``--executor ray`` on a real local Ray instance of 2 workers: the records of the local
executor, through worker deaths, checkpoints and the CLI; and every refusal in one line."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import torch
import yaml
from _factories import attack_argv
from conftest import CLASSES, SHAPE, synthetic

from aegis.attacks.pgd import PGD
from aegis.audit.config import parse_config
from aegis.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from aegis.cli.audit import EXAMPLE
from aegis.engine import Evaluation, evaluate
from aegis.errors import AegisError, CapabilityError, ConfigError
from aegis.executors import Batch, BatchWork, Finished, LocalExecutor, create_executor
from aegis.executors.distributed import RAY_MISSING, Plan, RayExecutor
from aegis.model import Classifier, ModelInfo
from aegis.records import Records
from aegis.threat import ThreatModel

THREAT = ThreatModel("linf", 0.3)
BATCH = 16
N = 112  # 7 batches, and >= FROZEN_MIN_POINTS: the frozen inference copy is used


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """Ray as aegis starts it (quiet, this process's sys.path), held to 2 CPUs: 2 workers
    of 1 torch thread each, as the local runs of the test suite use."""
    options = RayExecutor(workers=2).init_options()
    options["num_cpus"] = 2
    ray.init(**options)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def points() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic(N, seed=2)


def _same(a: Evaluation, b: Evaluation) -> None:
    for f in fields(Records):
        if f.name != "seconds":  # wall time differs between any two runs
            np.testing.assert_array_equal(
                getattr(a.records, f.name), getattr(b.records, f.name), err_msg=f.name
            )
    np.testing.assert_array_equal(a.x_adv, b.x_adv)


def _run(model: Classifier, pts: Any, attack: Any, executor: Any, **kw: Any) -> Evaluation:
    x, y = pts
    return evaluate(
        model, x, y, attack, THREAT, batch_size=BATCH, seed=5, executor=executor, **kw
    )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class DiesOnce(PGD):
    """PGD that kills its process on the ``call``-th attack call of the run, counted over all
    workers by tickets (files created with O_EXCL in ``folder``): once, whatever the retries.
    Its settings read as plain PGD's, so its checkpoints are PGD's."""

    folder: str = ""
    call: int = 0

    def run(self, model: Classifier, x: Any, y: Any, threat: Any, **kw: Any) -> Any:
        ticket = 0
        while True:
            try:
                fd = os.open(Path(self.folder) / f"call-{ticket}", os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                ticket += 1
                continue
            os.close(fd)
            break
        if ticket == self.call:
            (Path(self.folder) / "died").write_text(str(os.getpid()))
            os._exit(1)
        return super().run(model, x, y, threat, **kw)

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in super().to_dict().items() if k not in ("folder", "call")}


class Spy(RayExecutor):
    """Records which batches the engine sent, and whether each finished batch was on disk
    before the engine asked for the next one."""

    def __init__(self, folder: Path, **kw: Any) -> None:
        super().__init__(**kw)
        self.folder = folder
        self.sent: list[int] = []
        self.saved_on_arrival: list[bool] = []

    def run(
        self, model: Classifier, work: BatchWork, batches: Sequence[Batch], *, warmup: Any
    ) -> Iterator[Finished]:
        self.sent = [b.start for b in batches]
        for finished in super().run(model, work, batches, warmup=warmup):
            yield finished
            self.saved_on_arrival.append(any(self.folder.glob(f"batch-{finished.start:09d}-*.npz")))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny_net: torch.nn.Module) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ray-cli")
    x, y = synthetic(48, seed=3)
    model = d / "tiny.pt"  # TorchScript: travels to the workers as a TorchScript archive
    torch.jit.save(torch.jit.trace(tiny_net, x[:2]), str(model))
    np.save(d / "x.npy", x.numpy())
    np.save(d / "y.npy", y.numpy())
    return {"model": model, "x": d / "x.npy", "y": d / "y.npy"}


def _attack_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return attack_argv(files, out, "--steps", "10", "--batch-size", "8", *extra)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--executor", "ray", "--workers", "0"], "error: --workers must be >= 1, got 0"),
        (["--workers", "2"], "error: --workers and --ray-address set up Ray workers; add"),
        (["--executor", "dask"], "error: unknown executor 'dask'; use one of local, ray"),
    ],
)
def test_cli_refuses_bad_executor_options_in_one_line(
    cli: Any, files: dict[str, Path], tmp_path: Path, extra: list[str], message: str
) -> None:
    code, _, err = cli(*_attack_args(files, tmp_path / "run", *extra))
    assert code == EXIT_USAGE and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "run" / "results.json").exists()


def test_without_ray_installed_one_line_says_how(
    cli: Any, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(CapabilityError) as exc:
        create_executor("ray", workers=2)
    assert (
        str(exc.value) == RAY_MISSING == "--executor ray needs Ray: pip install 'aegis-robust[ray]'"
    )
    code, _, err = cli(*_attack_args(files, tmp_path / "run", "--executor", "ray"))
    assert code == EXIT_ERROR and err == f"error: {RAY_MISSING}\n"


def test_default_plan_one_worker_per_gpu_else_per_cpu() -> None:
    assert Plan.for_cluster({"CPU": 16.0}, None) == Plan(16, 1.0, 0.0, 1)
    assert Plan.for_cluster({"CPU": 16.0}, 4) == Plan(4, 4.0, 0.0, 4)
    assert Plan.for_cluster({"CPU": 16.0, "GPU": 2.0}, None) == Plan(2, 8.0, 1.0, 8)
    assert Plan.for_cluster({"CPU": 2.0}, 4) == Plan(4, 0.5, 0.0, 1)  # more workers than CPUs
    with pytest.raises(ConfigError, match="--workers must be >= 1, got 0"):
        RayExecutor(workers=0)
    opts = RayExecutor().init_options()
    assert opts["include_dashboard"] is False and opts["ignore_reinit_error"] is True
    assert str(Path(__file__).parent) in opts["runtime_env"]["env_vars"]["PYTHONPATH"]
    assert RayExecutor(address="auto").init_options()["address"] == "auto"


def test_audit_config_executor_block(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base = {"models": ["m.pt"], "evaluations": [{"type": "attack"}]}
    assert parse_config(base).executor.name == "local"
    assert parse_config({**base, "executor": "ray"}).executor.name == "ray"
    cfg = parse_config({**base, "executor": {"name": "ray", "workers": 3, "address": "auto"}})
    assert (cfg.executor.workers, cfg.executor.address) == (3, "auto")
    for bad, message in [
        ({"name": "ray", "workers": 0}, "executor.workers: must be >= 1, got 0"),
        ({"workers": 2}, "executor: workers and address are for Ray workers; add name: ray"),
        ({"name": "ray", "worker": 2}, "executor.worker: unknown key"),
        ("dask", "executor.name: input should be 'local' or 'ray'"),
    ]:
        with pytest.raises(ConfigError) as exc:
            parse_config({**base, "executor": bad}, "audit.yaml")
        assert str(exc.value).startswith(f"audit.yaml: {message}"), str(exc.value)
    # the example's commented executor block is valid once uncommented
    block = re.sub(r"(?m)^# (executor:.*)$", r"\1", EXAMPLE)
    block = re.sub(r"(?m)^#   (name|workers|address):", r"  \1:", block)
    assert parse_config(yaml.safe_load(block)).executor.address == "auto"

    import aegis.workflows.attack
    from aegis.workflows.audit import run_audit

    seen: dict[str, Any] = {}

    def fake_run_attack(*args: Any, **kw: Any) -> Any:
        seen.update(kw)
        raise ConfigError("stop here")

    monkeypatch.setattr(aegis.workflows.attack, "run_attack", fake_run_attack)
    run_audit(cfg, tmp_path / "audit")
    assert (seen["executor"], seen["workers"], seen["ray_address"]) == ("ray", 3, "auto")


def test_records_and_inputs_match_the_local_executor(
    ray_session: None, tiny: Classifier, points: Any, caplog: pytest.LogCaptureFixture
) -> None:
    attack = PGD(steps=8, random_start=True)  # random: each batch's seed must travel
    local = _run(tiny, points, attack, "local")
    done: list[int] = []
    distributed = _run(tiny, points, attack, RayExecutor(workers=2), progress=done.append)
    _same(local, distributed)
    assert local.records.success.any() and not local.records.success.all()
    assert tiny.describe()["inference"] == "torchscript-frozen"
    assert "records may differ" not in caplog.text  # the workers took the same path
    assert distributed.config["executor"] == {
        "name": "ray",
        "workers": 2,
        "address": None,
        "threads_per_worker": 1,
        "gpus_per_worker": 0.0,
    }
    assert local.config["executor"] == {"name": "local", "workers": 1}
    assert done == sorted(done) and len(done) == 7 and done[-1] == N  # as batches finish
    other_seed = evaluate(
        tiny, *points, attack, THREAT, batch_size=BATCH, seed=6, executor="ray"
    )  # fmt: skip
    assert not np.array_equal(other_seed.x_adv, distributed.x_adv)


def test_a_killed_worker_is_replaced_and_its_batch_sent_again(
    ray_session: None, tiny: Classifier, points: Any, tmp_path: Path
) -> None:
    local = _run(tiny, points, PGD(steps=8), "local")
    dies = DiesOnce(steps=8, folder=str(tmp_path), call=2)
    assert dies.to_dict() == PGD(steps=8).to_dict()
    again = _run(tiny, points, dies, RayExecutor(workers=2))
    assert int((tmp_path / "died").read_text()) != os.getpid()  # a worker died, not this one
    assert len(list(tmp_path.glob("call-*"))) == 8  # 7 batches, one of them twice
    _same(local, again)


def test_checkpoints_resume_on_ray_and_across_executors(
    ray_session: None, tiny: Classifier, points: Any, tmp_path: Path
) -> None:
    ckpt = tmp_path / "progress"
    attack = PGD(steps=8)
    local = _run(tiny, points, attack, "local")
    # A worker that dies with no retries left stops the run; what finished is on disk. The
    # 4th batch started kills its worker: by then 2 batches were finished (a worker gets its
    # next batch only once the engine has its last one).
    with pytest.raises(
        AegisError, match=r"batch at index \d+ died once \(ActorDiedError: The actor is dead"
    ):
        _run(
            tiny,
            points,
            DiesOnce(steps=8, folder=str(tmp_path), call=3),
            RayExecutor(workers=2, retries=0),
            checkpoint=ckpt,
        )
    kept = {int(p.name.split("-")[1]) for p in ckpt.glob("batch-*.npz")}
    assert 2 <= len(kept) < 7
    spy = Spy(ckpt, workers=2)
    resumed = _run(tiny, points, attack, spy, checkpoint=ckpt)
    assert sorted(spy.sent) == sorted(set(range(0, N, BATCH)) - kept)  # nothing sent twice
    assert spy.saved_on_arrival == [True] * len(spy.sent)
    _same(local, resumed)
    # A checkpoint written on Ray is read back by the local executor (and vice versa).
    (next(ckpt.glob("batch-000000016-*.npz"))).unlink()
    sent: list[int] = []

    class Counting(LocalExecutor):
        def run(self, model: Any, work: Any, batches: Any, *, warmup: Any) -> Any:
            sent.extend(b.start for b in batches)
            return super().run(model, work, batches, warmup=warmup)

    _same(local, _run(tiny, points, attack, Counting(), checkpoint=ckpt))
    assert sent == [16]


def test_cli_executor_ray_end_to_end(
    ray_session: None, cli: Any, files: dict[str, Path], tmp_path: Path
) -> None:
    code, out, err = cli(*_attack_args(files, tmp_path / "ray", "--executor", "ray"))
    assert code == EXIT_OK, err
    assert "2 Ray workers" in out
    res = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert res["config"]["executor"]["name"] == "ray"
    assert res["config"]["executor"]["workers"] == 2  # the default: one per CPU
    assert not (tmp_path / "ray" / "progress").exists()
    code, _, err = cli(*_attack_args(files, tmp_path / "local"))
    assert code == EXIT_OK, err
    ref = json.loads((tmp_path / "local" / "results.json").read_text())
    assert ref["config"]["executor"] == {"name": "local", "workers": 1}
    for run in (ref, res):
        run["records"].pop("seconds")  # wall time differs between any two runs
        run["metrics"]["calls"].pop("seconds")
    assert res["records"] == ref["records"] and res["metrics"] == ref["metrics"]
    assert sum(res["records"]["success"]) > 0
    with (
        np.load(tmp_path / "ray" / "samples.npz") as a,
        np.load(tmp_path / "local/samples.npz") as b,
    ):
        np.testing.assert_array_equal(a["x_adv"], b["x_adv"])


def _no_gradients(a: np.ndarray) -> np.ndarray:
    return np.zeros((len(a), CLASSES), np.float32)


def test_an_error_raised_on_a_worker_is_raised_as_it_is(ray_session: None, points: Any) -> None:
    query_only = Classifier(
        None, ModelInfo(num_classes=CLASSES, input_shape=SHAPE), query_fn=_no_gradients
    )
    with pytest.raises(CapabilityError) as local:
        _run(query_only, points, PGD(steps=2), "local")
    with pytest.raises(CapabilityError) as distributed:
        _run(query_only, points, PGD(steps=2), RayExecutor(workers=2))
    assert type(distributed.value) is CapabilityError
    assert str(distributed.value) == str(local.value) and "query-only" in str(local.value)


def test_a_random_defense_gives_the_local_records(
    ray_session: None, tiny: Classifier, points: Any
) -> None:
    """Its draws restart from each batch's seed (``Classifier.reseed``), so the batches a
    worker ran before do not matter."""
    from aegis.defenses.preprocessing import defend

    noisy = defend(tiny, ["gaussian-noise:sigma=0.3"], eot_samples=2)
    attack = PGD(steps=4, random_start=True)
    local = _run(noisy, points, attack, "local")
    _same(local, _run(noisy, points, attack, RayExecutor(workers=2)))
    assert local.records.success.any()


def test_models_ray_cannot_ship_are_refused(ray_session: None, points: Any) -> None:
    from aegis.registry import create

    session = threading.Lock()  # stands for a client session, a socket: nothing that pickles

    def query(a: np.ndarray) -> np.ndarray:
        with session:
            return np.zeros((len(a), CLASSES), np.float32)

    remote = Classifier(
        None, ModelInfo(num_classes=CLASSES, input_shape=SHAPE), query_fn=query, name="remote-api"
    )
    with pytest.raises(CapabilityError, match=r"remote-api cannot be sent to Ray workers \(.*lock"):
        _run(remote, points, create("square", queries=2), "ray")
