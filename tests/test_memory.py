"""Batch sizes sized to memory, and out-of-memory errors that halve a batch instead of ending
the run (``aegis.executors.memory``, ``BatchWork``)."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch
from torch import nn

from aegis.engine import evaluate
from aegis.errors import AegisError, ConfigError
from aegis.executors.memory import is_out_of_memory, parse_bytes, plan_batch, point_bytes
from aegis.model import Classifier, ModelInfo
from aegis.records import Records
from aegis.registry import create
from aegis.threat import ThreatModel

INFO = ModelInfo(num_classes=3, input_shape=(1, 8, 8))


class _Capped(nn.Module):
    """A network that raises the allocator's out-of-memory error on batches over ``cap``."""

    def __init__(self, net: nn.Module, cap: int, error: type[Exception]) -> None:
        super().__init__()
        self.net, self.cap, self.error = net, cap, error
        self.refused = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.cap:
            self.refused += 1
            raise self.error(
                "DefaultCPUAllocator: can't allocate memory: you tried to allocate 9999999 bytes"
            )
        out: torch.Tensor = self.net(x)
        return out


def _same(a: Records, b: Records) -> None:
    for f in fields(Records):
        if f.name != "seconds":
            np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name), f.name)


def test_parse_bytes() -> None:
    assert parse_bytes("8GiB") == 8 * 2**30
    assert parse_bytes("512 MB") == 512 * 10**6
    assert parse_bytes("1000") == 1000
    with pytest.raises(ConfigError, match="AEGIS_MEMORY_LIMIT"):
        parse_bytes("lots")


def test_out_of_memory_errors_are_told_apart() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: 8 bytes"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_point_bytes_grows_with_the_input(tiny_net) -> None:
    small = point_bytes(Classifier(tiny_net, INFO), torch.rand(2, 1, 8, 8))
    wide = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    wide(torch.rand(1, 3, 32, 32))
    big = point_bytes(
        Classifier(wide, ModelInfo(num_classes=3, input_shape=(3, 32, 32))),
        torch.rand(2, 3, 32, 32),
    )
    assert small is not None and big is not None
    # The 16×32×32 feature map (64 KiB a point, saved by ReLU and the linear layer) counts.
    assert big > 64 * 2**10 > small > 0


def test_default_batch_unless_memory_is_short(tiny, data, monkeypatch) -> None:
    x, _ = data
    pgd = [create("pgd", steps=2)]
    assert plan_batch(tiny, x, pgd).size == tiny.batch_size
    assert plan_batch(tiny, x, pgd).chosen_by == "default"
    assert plan_batch(tiny, x, pgd, given=7).chosen_by == "given"
    per_point = point_bytes(tiny, x)
    assert per_point is not None
    monkeypatch.setenv("AEGIS_MEMORY_LIMIT", str(per_point * 20))  # room for 10 at share 0.5
    plan = plan_batch(tiny, x, pgd)
    assert (plan.size, plan.chosen_by, plan.free_bytes) == (10, "memory", per_point * 20)
    # FAB linearizes the K − 1 = 2 other classes in one call: half the points fit.
    assert plan_batch(tiny, x, [create("fab", steps=2)]).size == 5
    assert plan_batch(tiny, x, [create("fab", steps=2)], targeted=True).size == 10
    assert plan_batch(tiny, x, [create("fab-t", steps=2)]).size == 10
    monkeypatch.setenv("AEGIS_MEMORY_LIMIT", "1")
    assert plan_batch(tiny, x, pgd).size == 1  # one point a batch, and a warning


def test_evaluate_records_the_plan(tiny, data, monkeypatch) -> None:
    x, y = data
    per_point = point_bytes(tiny, x)
    assert per_point is not None
    monkeypatch.setenv("AEGIS_MEMORY_LIMIT", str(per_point * 16))
    threat = ThreatModel("linf", 0.2)
    auto = evaluate(tiny, x[:30], y[:30], create("pgd", steps=3), threat, seed=3)
    batching = auto.config["batching"]
    assert (auto.config["batch_size"], batching["size"], batching["chosen_by"]) == (8, 8, "memory")
    assert batching["retries"] == []
    # The records are those of a run given that batch size.
    given = evaluate(tiny, x[:30], y[:30], create("pgd", steps=3), threat, seed=3, batch_size=8)
    _same(auto.records, given.records)


@pytest.mark.parametrize("error", [RuntimeError, torch.OutOfMemoryError])
def test_out_of_memory_halves_the_batch_with_identical_records(tiny_net, data, error) -> None:
    """A batch of 12 that runs out of memory is attacked as halves of 6, each with its own
    seed: the records are those of a run started at 6 (random starts included)."""
    x, y = data
    x, y = x[:36], y[:36]
    capped = _Capped(tiny_net, cap=6, error=error)
    threat = ThreatModel("linf", 0.2)
    attack = create("pgd", steps=4, random_start=True)
    got = evaluate(Classifier(capped, INFO), x, y, attack, threat, batch_size=12, seed=5)
    want = evaluate(Classifier(tiny_net, INFO), x, y, attack, threat, batch_size=6, seed=5)
    _same(got.records, want.records)
    np.testing.assert_array_equal(got.x_adv, want.x_adv)
    # One halving, then every later batch of 12 goes in sixes without failing again.
    assert got.config["batching"]["retries"] == [{"start": 0, "size": 12, "retry_size": 6}]
    assert got.config["batch_size"] == 12 and capped.refused == 1


def test_out_of_memory_at_one_point_is_one_line(tiny_net, data) -> None:
    x, y = data
    model = Classifier(_Capped(tiny_net, cap=0, error=RuntimeError), INFO)
    with pytest.raises(AegisError, match="out of memory on cpu with one point a batch") as info:
        evaluate(model, x[:4], y[:4], create("fgsm"), ThreatModel("linf", 0.1), batch_size=2)
    assert "\n" not in str(info.value)


def test_other_errors_are_not_retried(tiny_net, data) -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    x, y = data
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        evaluate(Classifier(Broken(), INFO), x[:4], y[:4], create("fgsm"), ThreatModel("linf", 0.1))


def test_a_resumed_run_keeps_the_size_it_started_with(tiny, data, tmp_path, monkeypatch) -> None:
    x, y = data
    per_point = point_bytes(tiny, x)
    assert per_point is not None
    monkeypatch.setenv("AEGIS_MEMORY_LIMIT", str(per_point * 16))
    threat = ThreatModel("linf", 0.2)
    first = evaluate(tiny, x[:20], y[:20], create("pgd", steps=2), threat, checkpoint=tmp_path)
    assert first.config["batch_size"] == 8
    monkeypatch.setenv("AEGIS_MEMORY_LIMIT", str(per_point * 64))  # more room now
    again = evaluate(tiny, x[:20], y[:20], create("pgd", steps=2), threat, checkpoint=tmp_path)
    assert (again.config["batch_size"], again.config["batching"]["chosen_by"]) == (8, "resumed")
    _same(first.records, again.records)


def test_jsma_pair_search_in_bounded_chunks_gives_the_same_pair(monkeypatch) -> None:
    """JSMA's O((H·W)²) pair scores go in row blocks when a point's do not fit in a chunk (at
    224×224, 2.5·10⁹ scores a point): the same pair as the whole-point search."""
    from aegis.attacks import jsma

    g = torch.Generator().manual_seed(0)
    alpha, beta = torch.randn(5, 40, generator=g), torch.randn(5, 40, generator=g)
    domain = torch.rand(5, 40, generator=g) > 0.2
    whole = jsma.best_pair(alpha, beta, domain)
    monkeypatch.setattr(jsma, "PAIR_CHUNK", 7 * 40)  # 7 rows of one point at a time
    blocks = jsma.best_pair(alpha, beta, domain)
    for a, b in zip(whole, blocks, strict=True):
        assert torch.equal(a, b)


def test_a_model_without_a_backward_keeps_the_default_batch(data) -> None:
    """The probe differentiates the model; where that fails (an op with no backward), the
    default batch is kept and a black-box attack still runs."""

    class NoBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return x.clone()

        @staticmethod
        def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            raise RuntimeError("this op has no backward")

    class Net(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = NoBackward.apply(x)
            return torch.stack([z[:, 0, :3].mean((1, 2)), z[:, 0, :, :3].mean((1, 2)),
                                z[:, 0, 2:6, 2:6].mean((1, 2))], 1)  # fmt: skip

    x, y = data
    model = Classifier(Net(), INFO)
    plan = plan_batch(model, x, [create("square", queries=10)])
    assert (plan.size, plan.chosen_by, plan.point_bytes) == (model.batch_size, "default", None)
    run = evaluate(model, x[:8], y[:8], create("square", queries=10), ThreatModel("linf", 0.1))
    assert run.config["batching"]["chosen_by"] == "default"
