"""aegis' attacks against torchattacks, ART and Foolbox, in one run, on the same points.

Run by hand (never in the test suite); the full run takes a long time on CPU:

    .venv/bin/python bench/bench_attacks.py [--section suite|minimal|pairs|all]
        [--model normal|robust|both] [--n 200] [--batch-size 100] [--queries 5000]
        [--spsa-steps 100] [--cw-steps 100] [--art-n N] [--art-aa-n 100] [--threads T]
        [--pairs apgd-ce,apgd-t,fab-t,square,hsj,spsa]

A quick check that every peer call works (minutes on 2 CPU cores):

    .venv/bin/python bench/bench_attacks.py --n 6 --queries 300 --spsa-steps 3 --cw-steps 5 \
        --art-aa-n 3 --model normal

Every attack gets the first ``--n`` points of the built-in MNIST test split (correctly
classified or not) and the reference CNN (``models/mnist_cnn.safetensors``, or its PGD-trained
twin ``mnist_cnn_pgd``), in batches of ``--batch-size``. Each attack runs once; peers' imports
and construction are not timed. Nothing a peer reports is trusted: what it returns is predicted
again with the aegis Classifier and audited against the budget and the box (the tolerance of
aegis' own audit, 1e-5); a returned point outside them counts as NOT adversarial and is counted
in the ``outside`` column. Points the model already gets wrong are not attacked points: they
count as non-robust and are left out of success rates and median norms (``fixed`` counts those
a peer moved back to the true class, as ART's DeepFool and HopSkipJump do: they attack the
predicted class, not the label).

Sections:

* ``suite`` (L∞, ε = 0.3): aegis ``standard`` and ``fast`` vs torchattacks' AutoAttack
  "standard" (which runs APGD/APGD-T/FAB with 10 steps, see PITFALLS) and ART's AutoAttack with
  its default attack list (APGD-CE and APGD-DLR with 5 restarts, DeepFool, Square 5,000 × 5
  restarts), on the first ``--art-aa-n`` points only because it is slow on CPU (its Square alone
  is 25,000 numpy-driven iterations per batch of 128 robust points). Robust accuracy is the
  per-sample worst case; rows on fewer points also print aegis' figure on those points.
* ``minimal`` (L2, unbounded): aegis fmn, ddn, cw, deepfool, fab and the ``minimal`` suite
  (per point, the smallest of ddn, fmn and fab) vs Foolbox C&W, DDN, FMN,
  torchattacks CW and DeepFool, ART C&W and DeepFool. Success rate, median L2 over all attacked
  points with +inf for failures (a failing attack cannot look good), median over successes,
  and the ratio of aegis' best median to Foolbox's best (target ≤ 0.97).
* ``pairs`` (equal budgets, L∞ ε = 0.3 unless said): apgd-ce, apgd-t, fab-t, square, hsj (L2,
  minimal), spsa against their peers (``--pairs`` picks some). ART's HopSkipJump has no query
  budget: it gets the iterations that fit in ``--queries`` (its measured calls are printed).
  torchattacks' SPSA spends 2 queries per sample, so it gets 64 samples for aegis' 128.

An aegis attack that is not registered (yet) is skipped with a note; any attack that raises is
reported as FAILED and the run goes on.

``calls/pt`` is model evaluations (forward passes, with or without a gradient) per point: for
aegis ``Records.forward_calls + gradient_calls``, for peers every row the peer sends through the
network (counted by a wrapper module). ``aegis÷it`` is aegis' seconds per point divided by the
row's (below 1: aegis is faster). The model's parameters are frozen (``requires_grad=False``)
by the aegis Classifier, so peers that call ``loss.backward()`` do not pay for parameter
gradients here: the timings are conservative for aegis.
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import sys
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aegis._alloc import keep_freed_memory
from aegis.engine import evaluate
from aegis.errors import ConfigError
from aegis.io.data import load_dataset
from aegis.model import Classifier
from aegis.registry import create, create_all
from aegis.threat import ThreatModel
from aegis.zoo.train import load_reference, model_filename, train_reference

EPS = 0.3
DF_OVERSHOOT = 0.02
PAIRS = ("apgd-ce", "apgd-t", "fab-t", "square", "hsj", "spsa")


class Counting(torch.nn.Module):
    """The network as peers see it: counts the rows sent through it."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += int(x.shape[0])
        # ART's HopSkipJump sends float64 arrays to a float32 network (a RuntimeError otherwise)
        out: Tensor = self.net(x if x.dtype == torch.float32 else x.float())
        return out


@dataclass
class Setup:
    """One reference model and the points every attack gets."""

    name: str
    clf: Classifier
    net: Counting
    x: Tensor
    y: Tensor
    clean_ok: np.ndarray
    batch: int
    art: Any = None  # ART's PyTorchClassifier, built on first use


@dataclass
class Result:
    """Per-point outcome of one attack on the first ``k`` points."""

    label: str
    seconds: float
    success: np.ndarray  # adversarial, within budget and box, among correctly classified points
    l2: np.ndarray
    attacked: np.ndarray
    calls: float | None
    aegis: bool
    outside: int = 0
    fixed: int = 0
    black: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def k(self) -> int:
        return int(self.success.shape[0])

    def first(self, k: int) -> Result:
        """The same figures restricted to the first ``k`` points (time scaled)."""
        return Result(
            f"{self.label} (first {k} pts)",
            self.seconds * k / self.k,
            self.success[:k],
            self.l2[:k],
            self.attacked[:k],
            self.calls,
            self.aegis,
        )


# -- running attacks ---------------------------------------------------------------------------


def build(names: str, **params: Any) -> list[Any] | str:
    """aegis attacks by registry name (a suite or one attack), or why they cannot be built."""
    try:
        if "," in names or names in ("standard", "fast", "minimal"):
            return create_all(names, **params)
        return [create(names, **params)]
    except ConfigError as exc:
        return f"not available yet ({exc})"


ONLY: re.Pattern[str] | None = None
"""``--only``: rows whose label this does not match are not run."""


def wanted(label: str) -> bool:
    if ONLY is None or ONLY.search(label):
        return True
    print(f"  not run (--only): {label}")
    return False


def run_aegis(
    label: str, s: Setup, names: str, threat: ThreatModel, k: int | None = None, **params: Any
) -> Result | None:
    if not wanted(label):
        return None
    if "," in names or names in ("standard", "fast", "minimal"):
        attacks = build(names, norm=threat.norm, **params)
    else:
        attacks = build(names, **params)
    if isinstance(attacks, str):
        print(f"  skipped {label}: {attacks}")
        return None
    k = s.x.shape[0] if k is None else k
    torch.manual_seed(0)
    t0 = time.perf_counter()
    try:
        ev = evaluate(s.clf, s.x[:k], s.y[:k], attacks, threat, batch_size=s.batch, seed=0)
    except Exception as exc:  # an attack being written by someone else may still fail
        print(f"  {label} FAILED: {type(exc).__name__}: {exc}")
        return None
    seconds = time.perf_counter() - t0
    print(f"  ran {label}: {seconds:.1f} s", flush=True)
    rec = ev.records
    return Result(
        label,
        seconds,
        rec.success.astype(bool),
        rec.l2.astype(float),
        rec.attacked.astype(bool),
        float((rec.forward_calls + rec.gradient_calls).sum()) / k,
        aegis=True,
    )


def run_peer(
    label: str,
    s: Setup,
    make: Callable[[], Any],
    call: Callable[[Any, Tensor, Tensor], Any],
    threat: ThreatModel,
    k: int | None = None,
) -> Result | None:
    """Build the peer attack (untimed), run it once on the first ``k`` points, audit it."""
    if not wanted(label):
        return None
    k = s.x.shape[0] if k is None else k
    x, y = s.x[:k], s.y[:k]
    try:
        attack = make()
        torch.manual_seed(0)
        np.random.seed(0)
        s.net.rows = 0
        t0 = time.perf_counter()
        out = call(attack, x, y)
        seconds = time.perf_counter() - t0
        print(f"  ran {label}: {seconds:.1f} s", flush=True)
    except Exception as exc:
        print(f"  {label} FAILED: {type(exc).__name__}: {exc}")
        return None
    rows = s.net.rows
    xa = torch.as_tensor(np.asarray(out) if not isinstance(out, Tensor) else out.detach())
    xa = xa.to(torch.float32).reshape(x.shape)
    return audit(label, s, xa, seconds, rows / k, threat)


def audit(
    label: str, s: Setup, xa: Tensor, seconds: float, calls: float, threat: ThreatModel
) -> Result:
    """Predict again on what a peer returned and check its budget and box."""
    k = xa.shape[0]
    x, y = s.x[:k], s.y[:k]
    finite = torch.isfinite(xa.flatten(1)).all(1)
    safe = torch.where(finite[:, None, None, None], xa, x)
    within = (finite & threat.within(safe, x, s.clf.bounds)).numpy()
    pred = s.clf.predict(safe).numpy()
    ok = s.clean_ok[:k]
    yn = y.numpy()
    flat = safe.flatten(1)
    constant = ((flat.amax(1) - flat.amin(1)) < 1e-6).numpy()
    return Result(
        label,
        seconds,
        ok & (pred != yn) & within,
        (safe - x).flatten(1).norm(dim=1).double().numpy(),
        ok.copy(),
        calls,
        aegis=False,
        outside=int((~within).sum()),
        fixed=int((~ok & (pred == yn)).sum()),
        black=int((ok & constant).sum()),
    )


def run_torch_peer(
    label: str,
    s: Setup,
    make: Callable[[], Callable[[Tensor, Tensor], Tensor]],
    threat: ThreatModel,
    k: int | None = None,
) -> Result | None:
    """A torch-in, torch-out peer, called on batches of ``s.batch`` points as the engine does."""

    def call(attack: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
        bs = s.batch
        return torch.cat(
            [attack(x[i : i + bs], y[i : i + bs]).detach() for i in range(0, x.shape[0], bs)]
        )

    return run_peer(label, s, make, call, threat, k)


def art_call(attack: Any, x: Tensor, y: Tensor) -> np.ndarray:
    out: np.ndarray = attack.generate(x=x.numpy(), y=y.numpy())
    return out


def art_classifier(s: Setup) -> Any:
    if s.art is None:
        from art.estimators.classification import PyTorchClassifier

        s.art = PyTorchClassifier(
            model=s.net,
            loss=torch.nn.CrossEntropyLoss(),
            input_shape=tuple(s.clf.input_shape),
            nb_classes=s.clf.num_classes,
            clip_values=s.clf.bounds,
            device_type="cpu" if s.clf.device.type == "cpu" else "gpu",
        )
    return s.art


def art_hsj_iterations(queries: int, init_eval: int = 100, max_eval: int = 10000) -> int:
    """ART's HopSkipJump has no query budget: the iterations whose gradient estimates
    (init_eval·√t each) plus ~15 binary/step-search queries fit in ``queries``."""
    spent, t = 50, 0  # the random initialization and its binary search
    while True:
        cost = min(int(init_eval * math.sqrt(t + 1)), max_eval) + 15
        if spent + cost > queries:
            return max(t, 1)
        spent += cost
        t += 1


def ta_apgd(ta: Any, net: torch.nn.Module) -> Any:
    """torchattacks' APGD-CE at AutoAttack's budget (100 steps, 1 restart)."""
    return ta.APGD(net, norm="Linf", eps=EPS, steps=100, n_restarts=1, loss="ce", seed=0)


def ta_apgdt(ta: Any, net: torch.nn.Module) -> Any:
    """torchattacks' APGD-T at AutoAttack's budget (100 steps, 9 targets)."""
    return ta.APGDT(net, norm="Linf", eps=EPS, steps=100, n_restarts=1, n_classes=10, seed=0)


def ta_fabt(ta: Any, net: torch.nn.Module) -> Any:
    """torchattacks' FAB-T (multi-targeted FAB) at AutoAttack's budget."""
    return ta.FAB(
        net,
        norm="Linf",
        eps=EPS,
        steps=100,
        n_restarts=1,
        multi_targeted=True,
        n_classes=10,
        seed=0,
    )


# -- printing ----------------------------------------------------------------------------------


def fmt(v: float | None, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return "inf" if math.isinf(v) else format(v, spec)


def stats(r: Result) -> dict[str, float | None]:
    n_att = int(r.attacked.sum())
    succ = r.success & r.attacked
    l2_all = np.where(succ, r.l2, np.inf)[r.attacked]
    return {
        "robust": float((r.attacked & ~r.success).sum()) / r.k,
        "success": float(succ.sum()) / n_att if n_att else None,
        "med_all": float(np.median(l2_all)) if n_att else None,
        "med_succ": float(np.median(r.l2[succ])) if succ.any() else None,
    }


def table(title: str, rows: list[Result | None], *, minimal: bool) -> None:
    """One table; the first aegis row is the reference of the time ratios."""
    done = [r for r in rows if r is not None]
    print(f"\n{title}")
    if not done:
        print("  (nothing ran)")
        return
    ref = next((r for r in done if r.aegis), None)
    head = f"  {'':44s} {'pts':>4s} {'seconds':>8s} {'aegis÷it':>8s} {'calls/pt':>9s}"
    head += (
        f" {'success':>7s} {'med L2':>7s} {'L2 succ':>7s}" if minimal else f" {'robust acc':>10s}"
    )
    print(head + f" {'outside':>7s} {'fixed':>5s}")
    for r in done:
        st = stats(r)
        ratio = None if ref is None else (ref.seconds / ref.k) / (r.seconds / r.k)
        line = f"  {r.label[:44]:44s} {r.k:4d} {r.seconds:8.2f} {fmt(ratio):>8s}"
        line += f" {fmt(r.calls, '.0f'):>9s}"
        if minimal:
            line += f" {fmt(st['success']):>7s} {fmt(st['med_all']):>7s} {fmt(st['med_succ']):>7s}"
        else:
            line += f" {fmt(st['robust']):>10s}"
        line += f" {r.outside:7d} {r.fixed:5d}"
        print(line)
        if r.black:
            print(
                f"  {'':4s}↳ {r.black} returned images are constant (all black), the peer's "
                "failure value; counted as found when the model misclassifies them"
            )
        for note in r.notes:
            print(f"  {'':4s}↳ {note}")
        if ref is not None and not r.aegis and r.k < ref.k:
            sub = ref.first(r.k)
            st2 = stats(sub)
            figure = (
                f"success {fmt(st2['success'])}, median L2 {fmt(st2['med_all'])}"
                if minimal
                else f"robust accuracy {fmt(st2['robust'])}"
            )
            print(f"  {'':4s}↳ {ref.label} on the same {r.k} points: {figure}")


# -- sections ----------------------------------------------------------------------------------


def section_suite(s: Setup, args: argparse.Namespace) -> None:
    threat = ThreatModel("linf", EPS)
    rows: list[Result | None] = [
        run_aegis("aegis standard", s, "standard", threat),
        run_aegis("aegis fast (not for reporting)", s, "fast", threat),
    ]
    if args.eager_row:
        eager = Classifier(s.clf.module, s.clf.info, frozen_inference=False)
        rows.append(
            run_aegis("aegis standard, module only", replace(s, clf=eager), "standard", threat)
        )
    try:
        import torchattacks

        def make_ta() -> Any:
            return torchattacks.AutoAttack(
                s.net, norm="Linf", eps=EPS, version="standard", n_classes=10, seed=0
            )

        r = run_torch_peer(
            f"torchattacks {torchattacks.__version__} AutoAttack", s, make_ta, threat
        )
        if r is not None:
            r.notes.append("its 'standard' runs APGD, APGD-T and FAB with 10 steps, not 100")
        rows.append(r)

        def make_ta_100() -> Any:
            ta = torchattacks
            return ta.MultiAttack(
                [
                    ta_apgd(ta, s.net),
                    ta_apgdt(ta, s.net),
                    ta_fabt(ta, s.net),
                    ta.Square(s.net, norm="Linf", eps=EPS, n_queries=5000, n_restarts=1, seed=0),
                ]
            )

        rows.append(
            run_torch_peer(
                f"torchattacks {torchattacks.__version__} MultiAttack, AutoAttack's budgets",
                s,
                make_ta_100,
                threat,
            )
        )
    except ImportError:
        print("  torchattacks is not installed: pip install --no-deps torchattacks")
    try:
        import art
        from art.attacks.evasion import AutoAttack

        _stub_multiprocess()
        k = min(args.art_aa_n, s.x.shape[0])
        if k < 1:
            raise _Skip("ART AutoAttack skipped (--art-aa-n 0)")

        def make_art() -> Any:
            aa = AutoAttack(art_classifier(s), norm=np.inf, eps=EPS, batch_size=s.batch)
            for member in aa.attacks:  # the default list; only its progress bars are silenced
                member.verbose = False
            return aa

        r = run_peer(
            f"ART {art.__version__} AutoAttack (default list)", s, make_art, art_call, threat, k
        )
        if r is not None and k < s.x.shape[0]:
            r.notes.append(
                f"ART ran on the first {k} points only (--art-aa-n): its Square runs 5,000 "
                "iterations × 5 restarts, in numpy, tens of minutes on CPU for a robust model"
            )
        rows.append(r)
    except ImportError:
        print("  ART is not installed: pip install adversarial-robustness-toolbox")
    except _Skip as skip:
        print(f"  {skip}")
    table(f"suite: L∞ ε={EPS}, {s.name} model, per-sample worst case", rows, minimal=False)


class _Skip(Exception):
    pass


def _stub_multiprocess() -> None:
    """ART 1.20.1's ``AutoAttack.generate`` imports ``multiprocess`` (not one of its declared
    dependencies) even though it only uses it when ``parallel_pool_size > 0``; without it the
    default call fails. A placeholder module lets the sequential default run."""
    try:
        import multiprocess  # noqa: F401
    except ImportError:
        sys.modules["multiprocess"] = types.ModuleType("multiprocess")


def section_minimal(s: Setup, args: argparse.Namespace) -> None:
    threat = ThreatModel("l2", math.inf)
    bs = s.batch
    cw_steps = args.cw_steps
    rows: list[Result | None] = [
        run_aegis("aegis fmn", s, "fmn", threat),
        run_aegis("aegis ddn", s, "ddn", threat),
        run_aegis(f"aegis cw ({cw_steps} steps × 9 searches)", s, "cw", threat, steps=cw_steps),
        run_aegis("aegis deepfool", s, "deepfool", threat),
        run_aegis("aegis fab", s, "fab", threat),
        run_aegis("aegis minimal suite (ddn, fmn, fab: per-point min)", s, "minimal", threat),
    ]
    aegis_rows = [r for r in rows if r is not None]
    fb_rows: list[Result | None] = []
    try:
        import foolbox as fb

        fmodel = fb.PyTorchModel(s.net, bounds=s.clf.bounds)

        def fb_make(attack: Any) -> Callable[[], Callable[[Tensor, Tensor], Tensor]]:
            # epsilons=None: minimize, unbounded; success flag ignored (we predict again)
            return lambda: lambda xb, yb: attack(fmodel, xb, yb, epsilons=None)[1]

        fv = fb.__version__
        fb_rows = [
            run_torch_peer(
                f"foolbox {fv} L2 C&W ({cw_steps} × 9)",
                s,
                fb_make(fb.attacks.L2CarliniWagnerAttack(binary_search_steps=9, steps=cw_steps)),
                threat,
            ),
            run_torch_peer(
                f"foolbox {fv} DDN", s, fb_make(fb.attacks.DDNAttack(steps=100)), threat
            ),
            run_torch_peer(
                f"foolbox {fv} L2 FMN", s, fb_make(fb.attacks.L2FMNAttack(steps=100)), threat
            ),
        ]
        rows.extend(fb_rows)
    except ImportError:
        print("  foolbox is not installed: pip install --no-deps foolbox")
    try:
        import torchattacks

        tv = torchattacks.__version__
        rows.append(
            run_torch_peer(
                f"torchattacks {tv} CW (c=1, 100 steps)",
                s,
                lambda: torchattacks.CW(s.net, c=1, kappa=0, steps=100, lr=0.01),
                threat,
            )
        )
        rows.append(
            run_torch_peer(
                f"torchattacks {tv} DeepFool (50, 0.02)",
                s,
                lambda: torchattacks.DeepFool(s.net, steps=50, overshoot=DF_OVERSHOOT),
                threat,
            )
        )
    except ImportError:
        print("  torchattacks is not installed: pip install --no-deps torchattacks")
    try:
        import art
        from art.attacks.evasion import CarliniL2Method, DeepFool

        k = min(args.art_n or s.x.shape[0], s.x.shape[0])
        av = art.__version__
        rows.append(
            run_peer(
                f"ART {av} C&W ({cw_steps} × 9)",
                s,
                lambda: CarliniL2Method(
                    art_classifier(s),
                    confidence=0.0,
                    learning_rate=0.01,
                    binary_search_steps=9,
                    max_iter=cw_steps,
                    initial_const=1e-3,
                    batch_size=bs,
                    verbose=False,
                ),
                art_call,
                threat,
                k,
            )
        )
        rows.append(
            run_peer(
                f"ART {av} DeepFool (50, 0.02)",
                s,
                lambda: DeepFool(
                    art_classifier(s),
                    max_iter=50,
                    epsilon=DF_OVERSHOOT,
                    nb_grads=10,
                    batch_size=bs,
                    verbose=False,
                ),
                art_call,
                threat,
                k,
            )
        )
    except ImportError:
        print("  ART is not installed: pip install adversarial-robustness-toolbox")
    table(f"minimal: L2, unbounded, {s.name} model", rows, minimal=True)
    ours = [stats(r)["med_all"] for r in aegis_rows]
    theirs = [stats(r)["med_all"] for r in fb_rows if r is not None]
    ours_f = [v for v in ours if v is not None]
    theirs_f = [v for v in theirs if v is not None]
    if ours_f and theirs_f:
        a, b = min(ours_f), min(theirs_f)
        ratio = a / b if math.isfinite(b) and b > 0 else math.nan
        verdict = "met" if ratio <= 0.97 else "NOT met"
        print(
            f"  aegis' best median L2 {fmt(a)} ÷ Foolbox's best (C&W/DDN/FMN) {fmt(b)} = "
            f"{fmt(ratio)} (target ≤ 0.97: {verdict})"
        )


def section_pairs(s: Setup, args: argparse.Namespace) -> None:
    linf = ThreatModel("linf", EPS)
    l2_min = ThreatModel("l2", math.inf)
    bs, q = s.batch, args.queries
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
        print("  torchattacks is not installed: pip install --no-deps torchattacks")
    try:
        import art
        from art.attacks import evasion as art_ev
    except ImportError:
        art = None
        print("  ART is not installed: pip install adversarial-robustness-toolbox")
    k_art = min(args.art_n or s.x.shape[0], s.x.shape[0])
    wanted = {w.strip() for w in args.pairs.split(",")}
    tv = torchattacks.__version__ if torchattacks else ""
    av = art.__version__ if art else ""

    def ta(label: str, make: Callable[[], Any], threat: ThreatModel = linf) -> Result | None:
        if torchattacks is None:
            return None
        return run_torch_peer(f"torchattacks {tv} {label}", s, make, threat)

    def ar(label: str, make: Callable[[], Any], threat: ThreatModel = linf) -> Result | None:
        if art is None:
            return None
        return run_peer(f"ART {av} {label}", s, make, art_call, threat, k_art)

    # APGD-CE
    if "apgd-ce" in wanted:
        table(
            f"pairs: APGD-CE, L∞ ε={EPS}, 100 steps, 1 restart, {s.name} model",
            [
                run_aegis("aegis apgd-ce", s, "apgd-ce", linf, steps=100, restarts=1),
                ta(
                    "APGD (ce)",
                    lambda: ta_apgd(torchattacks, s.net),
                ),
                _noted(
                    ar(
                        "AutoProjectedGradientDescent (ce)",
                        lambda: art_ev.AutoProjectedGradientDescent(
                            art_classifier(s),
                            norm=np.inf,
                            eps=EPS,
                            max_iter=100,
                            nb_random_init=1,
                            loss_type="cross_entropy",
                            batch_size=bs,
                            verbose=False,
                        ),
                    ),
                    "ART's default first step eps_step=0.1 (the reference's is 2ε)",
                ),
            ],
            minimal=False,
        )
    # APGD-T
    if "apgd-t" in wanted:
        table(
            f"pairs: APGD-T, L∞ ε={EPS}, 100 steps, 9 targets, {s.name} model",
            [
                run_aegis(
                    "aegis apgd-t", s, "apgd-t", linf, steps=100, restarts=1, target_classes=9
                ),
                ta(
                    "APGDT",
                    lambda: ta_apgdt(torchattacks, s.net),
                ),
            ],
            minimal=False,
        )
    # FAB-T
    if "fab-t" in wanted:
        table(
            f"pairs: FAB-T, L∞ ε={EPS}, 100 steps, 9 targets, {s.name} model",
            [
                run_aegis("aegis fab-t", s, "fab-t", linf, steps=100, restarts=1, target_classes=9),
                ta(
                    "FAB (multi-targeted)",
                    lambda: ta_fabt(torchattacks, s.net),
                ),
            ],
            minimal=False,
        )
    # Square
    if "square" in wanted:
        table(
            f"pairs: Square, L∞ ε={EPS}, {q} queries, p_init 0.8, {s.name} model",
            [
                run_aegis(f"aegis square ({q} queries)", s, "square", linf, queries=q),
                ta(
                    f"Square ({q})",
                    lambda: torchattacks.Square(
                        s.net, norm="Linf", eps=EPS, n_queries=q, n_restarts=1, p_init=0.8, seed=0
                    ),
                ),
                ar(
                    f"SquareAttack ({q})",
                    lambda: art_ev.SquareAttack(
                        art_classifier(s),
                        norm=np.inf,
                        max_iter=q,
                        eps=EPS,
                        p_init=0.8,
                        nb_restarts=1,
                        batch_size=bs,
                        verbose=False,
                    ),
                ),
            ],
            minimal=False,
        )
    # HopSkipJump (L2, minimal)
    if "hsj" in wanted:
        iters = art_hsj_iterations(q)
        table(
            f"pairs: HopSkipJump, L2 unbounded, ~{q} queries, {s.name} model",
            [
                run_aegis(f"aegis hsj ({q} queries)", s, "hsj", l2_min, queries=q),
                ar(
                    f"HopSkipJump ({iters} iterations)",
                    lambda: art_ev.HopSkipJump(
                        art_classifier(s),
                        batch_size=bs,
                        targeted=False,
                        norm=2,
                        max_iter=iters,
                        max_eval=10000,
                        init_eval=100,
                        init_size=100,
                        verbose=False,
                    ),
                    l2_min,
                ),
            ],
            minimal=True,
        )
    # SPSA
    if "spsa" in wanted:
        st = args.spsa_steps
        table(
            f"pairs: SPSA, L∞ ε={EPS}, {st} steps × 128 queries, {s.name} model",
            [
                run_aegis(f"aegis spsa ({st} × 128)", s, "spsa", linf, steps=st, samples=128),
                _noted(
                    ta(
                        f"SPSA ({st} × 64 pairs)",
                        lambda: torchattacks.SPSA(
                            s.net,
                            eps=EPS,
                            delta=0.01,
                            lr=0.01,
                            nb_iter=st,
                            nb_sample=64,
                            max_batch_size=64,
                        ),
                    ),
                    "no random start; ART and Foolbox have no SPSA",
                ),
            ],
            minimal=False,
        )


def _noted(r: Result | None, note: str) -> Result | None:
    if r is not None:
        r.notes.append(note)
    return r


# -- main --------------------------------------------------------------------------------------


def load(kind: str, args: argparse.Namespace) -> Setup:
    adversarial = "pgd" if kind == "robust" else None
    path = args.models / model_filename("mnist", adversarial)
    if not path.is_file():
        print(f"{path} is missing: training it (deterministic; minutes for the PGD one)")
        train_reference("mnist", out_dir=args.models, adversarial=adversarial, progress=False)
    clf = load_reference(path)
    module = clf.module
    assert isinstance(module, torch.nn.Module)
    # Peers get their own copy of the network as it was saved (contiguous memory format, as
    # a user of theirs holds it): the aegis Classifier may switch its module to channels-last.
    module = copy.deepcopy(module).eval()
    x, y = load_dataset("mnist", split="test").subset(args.n).tensors()
    assert y is not None
    clean_ok = (clf.predict(x) == y).numpy()
    name = "PGD-trained" if kind == "robust" else "normally trained"
    return Setup(name, clf, Counting(module).eval(), x, y, clean_ok, args.batch_size)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--section", choices=["suite", "minimal", "pairs", "all"], default="all")
    ap.add_argument("--model", choices=["normal", "robust", "both"], default="both")
    ap.add_argument("--n", type=int, default=200, help="first N MNIST test points")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--queries", type=int, default=5000, help="Square and HopSkipJump budget")
    ap.add_argument("--spsa-steps", type=int, default=100, help="SPSA steps (128 queries each)")
    ap.add_argument("--cw-steps", type=int, default=100, help="C&W steps per constant (9 searches)")
    ap.add_argument("--art-n", type=int, default=None, help="ART's points outside the suite")
    ap.add_argument(
        "--art-aa-n", type=int, default=100, help="ART AutoAttack's points (slow; 0: skip)"
    )
    ap.add_argument(
        "--pairs",
        default=",".join(PAIRS),
        help=f"which pairs of the pairs section (default all: {','.join(PAIRS)})",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default=None, help="run only the rows whose label matches this regex")
    ap.add_argument(
        "--eager-row",
        action="store_true",
        help="suite: also run aegis standard without the frozen TorchScript copy",
    )
    ap.add_argument("--models", type=Path, default=Path("models"))
    args = ap.parse_args()
    unknown = {w.strip() for w in args.pairs.split(",")} - set(PAIRS)
    if unknown:
        ap.error(f"--pairs: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PAIRS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    # The allocator tuning that aegis' engine applies to its process (aegis/_alloc.py) is
    # applied before any row, so peers run with the same allocator; AEGIS_MALLOC=system runs
    # every row without it.
    allocator = "glibc tuned" if keep_freed_memory() else "as the system set it"
    print(f"allocator: {allocator} (the same for every row)")
    global ONLY
    ONLY = None if args.only is None else re.compile(args.only)
    warnings.filterwarnings("ignore", category=UserWarning, module="torchattacks")
    kinds = ["normal", "robust"] if args.model == "both" else [args.model]
    sections = ["suite", "minimal", "pairs"] if args.section == "all" else [args.section]
    for kind in kinds:
        s = load(kind, args)
        print(
            f"\n=== {s.name} reference CNN, first {args.n} MNIST test points "
            f"(clean accuracy {s.clean_ok.mean():.3f}), batch {s.batch}, "
            f"{torch.get_num_threads()} threads ==="
        )
        for name in sections:
            {"suite": section_suite, "minimal": section_minimal, "pairs": section_pairs}[name](
                s, args
            )


if __name__ == "__main__":
    main()
