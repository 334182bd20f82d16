"""Early stopping and active sets must not cost a host sync per step on an accelerator.

There is no GPU in the default suite, so the calls that *would* synchronize a CUDA device with
the host are counted on CPU: ``item``, ``tolist``, ``numpy``, ``cpu``, ``int()``/``float()``/
``bool()`` of a tensor (``if t.any():`` goes through ``__bool__``), ``nonzero``/``argwhere``/
one-argument ``where``/``masked_select``/``unique`` (their output size depends on the data),
and indexing or index-assignment with a boolean mask (a ``nonzero`` inside). Indexing with
integer tensors, ``torch.where(c, a, b)`` and reductions kept as tensors do not sync.

Each attack runs at 1, 20 and 40 steps on the same points; differences of the counts divided
by the differences of the steps are per-step costs, so setup (input checks, target ranking,
the final projection) cancels: steps 21–40 give the steady cost, steps 2–40 also hold the
compactions of the active set, which mostly happen early. Both must stay under each attack's
measured bound; ``pytest -s`` prints the table and where the syncs come from.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import aegis
from aegis.attacks.iterative import COMPACT_EVERY
from aegis.model import Classifier
from aegis.registry import create
from aegis.threat import ThreatModel

AEGIS_DIR = str(Path(aegis.__file__).parent)

# Methods that always sync on CUDA (the whole call is counted).
FUNCTIONS = ("nonzero", "argwhere", "masked_select", "unique")  # torch.<name> versions too
ALWAYS: tuple[str, ...] = (
    "item",
    "tolist",
    "numpy",
    "cpu",
    *FUNCTIONS,
    "__bool__",
    "__int__",
    "__float__",
)
ALWAYS += ("__index__",)


@dataclass
class SyncCounter:
    """Calls that would synchronize with the host, by their innermost ``aegis`` source line."""

    sites: Counter[str] = field(default_factory=Counter)
    depth: int = 0  # > 0 inside a counted call: torch's own nested calls are not counted again

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def record(self, what: str) -> None:
        frame = sys._getframe(2)
        while frame is not None and not frame.f_code.co_filename.startswith(AEGIS_DIR):
            frame = frame.f_back  # type: ignore[assignment]
        where = "outside aegis"
        if frame is not None:
            path = Path(frame.f_code.co_filename).relative_to(AEGIS_DIR)
            where = f"{path}:{frame.f_lineno}"
        self.sites[f"{where} {what}"] += 1

    def wrap(self, what: str, fn: Callable[..., Any], when: Callable[..., bool]) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.depth == 0 and when(*args, **kwargs):
                self.record(what)
            self.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1

        return counted


def _has_mask(index: object) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool and i.ndim > 0 for i in items)


def _mask_get(_self: Tensor, index: object) -> bool:
    return _has_mask(index)


def _mask_set(_self: Tensor, index: object, value: object) -> bool:
    # A scalar written through a lone mask becomes masked_fill, which does not sync.
    scalar = not isinstance(value, Tensor) or value.ndim == 0
    return _has_mask(index) and not (scalar and not isinstance(index, tuple))


def _one_arg_where(*args: Any, **kwargs: Any) -> bool:
    return len(args) + len(kwargs) == 1


def _always(*_args: Any, **_kwargs: Any) -> bool:
    return True


@contextmanager
def count_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncCounter]:
    """Count, while active, the calls that would sync a CUDA device with the host."""
    counter = SyncCounter()
    with monkeypatch.context() as m:
        for name in ALWAYS:
            m.setattr(Tensor, name, counter.wrap(name, getattr(Tensor, name), _always))
        for name in FUNCTIONS:
            m.setattr(torch, name, counter.wrap(f"torch.{name}", getattr(torch, name), _always))
        m.setattr(torch, "where", counter.wrap("torch.where(c)", torch.where, _one_arg_where))
        m.setattr(Tensor, "__getitem__", counter.wrap("t[mask]", Tensor.__getitem__, _mask_get))
        m.setattr(Tensor, "__setitem__", counter.wrap("t[mask]=", Tensor.__setitem__, _mask_set))
        yield counter


def test_the_counter_sees_each_kind_of_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    t = torch.arange(6.0)
    mask = t > 2
    with count_syncs(monkeypatch) as c:
        t.sum().item()
        bool(mask.any())
        int(t[0])
        float(t[1])
        t.tolist()
        mask.nonzero()
        torch.nonzero(mask)
        torch.where(mask)
        t[mask]
        t[mask] = t[mask] + 1  # the read and the write each sync
        t.numpy()
        t.cpu()
        t[mask.nonzero().squeeze(1)]  # the nonzero syncs, the integer index does not
        # None of these sync on a device:
        t[mask] = 0.0  # masked_fill
        torch.where(mask, t, -t)
        t.amax()
        t[2:4]
    assert c.total == 14, c.sites
    assert all(site.startswith("outside aegis") for site in c.sites)


# -- per-step costs of the attacks ------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    knob: str  # the parameter that sets the number of steps
    fixed: dict[str, int]
    bound: float  # syncs per step: the measured value (see the table) with a little slack
    source: str  # where the syncs that remain come from


CASES = {
    "pgd": Case("steps", {}, 1.2 / COMPACT_EVERY, "the active-set check every COMPACT_EVERY steps"),
    "apgd-ce": Case("steps", {}, 0.3, "the active-set check every 4 steps"),
    "apgd-t": Case("steps", {"target_classes": 2}, 0.55, "apgd-ce's, in each of 2 target runs"),
    "fab-t": Case("steps", {"target_classes": 2}, 0.45, "the check every 5 steps, 2 target runs"),
    "square": Case("queries", {}, 1.05, "the active set, recomputed at every query"),
}
# ε (linf) where no point is fooled within 40 steps, so the loop runs every step, and one
# where about 2/3 are fooled part-way (7% for 40 Square queries), so early stopping works.
EPS = {"robust": 0.05, "early-stop": 0.3}
STEPS = (1, 20, 40)
TABLE: dict[tuple[str, str], str] = {}


def _count(
    model: Classifier, name: str, steps: int, x: Tensor, y: Tensor, eps: float
) -> tuple[int, Counter[str], Tensor]:
    case = CASES[name]
    attack = create(name, **case.fixed, **{case.knob: steps})
    gen = torch.Generator().manual_seed(0)
    with pytest.MonkeyPatch.context() as mp, count_syncs(mp) as counter:
        x_adv = attack(model, x, y, ThreatModel("linf", eps), generator=gen)
    return counter.total, counter.sites, x_adv


@pytest.fixture(scope="module")
def table() -> Iterator[dict[tuple[str, str], str]]:
    """The measurements, printed (``pytest -s``) once every case has run."""
    yield TABLE
    print("\n\nattack   regime      steady  whole-run  fooled  top sites (40 steps)")
    for key in sorted(TABLE):
        print(TABLE[key])


@pytest.mark.parametrize("regime", sorted(EPS))
@pytest.mark.parametrize("name", list(CASES))
def test_syncs_per_step(
    tiny: Classifier,
    data: tuple[Tensor, Tensor],
    table: dict[tuple[str, str], str],
    name: str,
    regime: str,
) -> None:
    """``steady``: the syncs of steps 21–40 per step; ``whole-run``: of steps 2–40, which
    also holds the early compactions of the active set (most points fall in the first steps)."""
    x, y = data
    keep = tiny.predict(x) == y  # attack the correctly classified points, as the engine does
    x, y = x[keep], y[keep]
    tiny.logits(x[:2])  # the first call chooses the memory layout: not part of any attack
    eps = EPS[regime]
    (one, _, _), (mid, _, _), (top, sites, x_adv) = (
        _count(tiny, name, s, x, y, eps) for s in STEPS
    )
    steady = (top - mid) / (STEPS[2] - STEPS[1])
    whole = (top - one) / (STEPS[2] - STEPS[0])
    fooled = float((tiny.predict(x_adv) != y).float().mean())
    where = ", ".join(f"{site} ×{n}" for site, n in sites.most_common(3))
    table[name, regime] = f"{name:8} {regime:10} {steady:7.3f} {whole:9.3f} {fooled:6.0%}  {where}"
    if regime == "robust":
        assert fooled == 0.0, "every step must run: choose a smaller eps"
    else:
        assert 0.0 < fooled < 1.0, "early stopping must be at work: choose another eps"
    assert max(steady, whole) <= CASES[name].bound, (CASES[name].source, sites.most_common(6))
