"""PGD-40 (L∞) against the compute floor and torchattacks, in one run, on the same points.

The floor is 40 × (forward + input gradient) of the same model on the same batch in a plain
loop — the least any 40-step gradient attack can cost. Run by hand:

    .venv/bin/python bench/bench_pgd.py [--robust] [--n 1000] [--repeats 5] [--device cpu]

It prints wall-time medians, ratios to the floor and to torchattacks' PGD measured in the same
run, and the robust accuracy each attack leaves. torchattacks installs with
``pip install --no-deps torchattacks``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from aegis.io.data import load_dataset
from aegis.io.models import load_classifier
from aegis.registry import create
from aegis.threat import ThreatModel
from aegis.zoo.train import train_reference

STEPS, EPS, ALPHA = 40, 0.3, 0.01


def timed_round_robin(
    fns: dict[str, Callable[[], torch.Tensor]], repeats: int, sync: Callable[[], None]
) -> dict[str, tuple[float, torch.Tensor]]:
    """Median wall time of each function, timed in turns so that drifts hit all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, torch.Tensor] = {}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            outs[k] = fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), outs[k]) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--robust", action="store_true", help="use the PGD-trained reference model")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", type=Path, default=Path("models"))
    args = ap.parse_args()

    result = train_reference(
        "mnist", out_dir=args.models, adversarial="pgd" if args.robust else None, progress=False
    )
    clf = load_classifier(result.model_path, device=args.device)
    module = clf.module
    assert isinstance(module, torch.nn.Module)
    ds = load_dataset("mnist", split="test").subset(args.n)
    x, y = (t.to(args.device) for t in ds.tensors())
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.set_num_threads(torch.get_num_threads())

    def floor() -> torch.Tensor:
        xa = x.clone()
        for _ in range(STEPS):
            xg = xa.requires_grad_(True)
            loss = F.cross_entropy(module(xg), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xg)
            xa = xg.detach()
        return xa + 0 * g

    threat = ThreatModel("linf", EPS)
    ours = create("pgd", steps=STEPS, step_size=ALPHA)
    ours_full = create("pgd", steps=STEPS, step_size=ALPHA, early_stop=False)

    def run(attack):  # type: ignore[no-untyped-def]
        return lambda: attack(clf, x, y, threat, generator=torch.Generator(dev).manual_seed(0))

    fns: dict[str, Callable[[], torch.Tensor]] = {
        "floor: 40 × (fwd + input grad)": floor,
        "aegis pgd (early stop, default)": run(ours),
        "aegis pgd (no early stop)": run(ours_full),
    }
    try:
        import torchattacks

        ta = torchattacks.PGD(module, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)
        fns[f"torchattacks {torchattacks.__version__} PGD"] = lambda: ta(x, y)
    except ImportError:
        print("torchattacks is not installed: pip install --no-deps torchattacks")
    torch.manual_seed(0)
    timings = timed_round_robin(fns, args.repeats, sync)
    t_floor = timings["floor: 40 × (fwd + input grad)"][0]
    rows = []
    for label, (t, xa) in timings.items():
        acc = None if label.startswith("floor") else (clf.predict(xa) == y).float().mean().item()
        rows.append((label, t, acc))
    peer = rows[-1][1]
    model_name = "PGD-trained" if args.robust else "normally trained"
    print(
        f"PGD-40 L∞ ε={EPS} α={ALPHA} on {args.n} MNIST test points, {model_name} reference CNN, "
        f"device {args.device}, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"clean accuracy {(clf.predict(x) == y).float().mean().item():.3f}")
    print(f"{'':40s} {'seconds':>8s} {'÷ floor':>8s} {'÷ peer':>8s} {'robust acc':>10s}")
    for label, t, acc in rows:
        print(
            f"{label:40s} {t:8.3f} {t / t_floor:8.3f} {t / peer:8.3f} "
            f"{'' if acc is None else f'{acc:.3f}':>10s}"
        )


if __name__ == "__main__":
    main()
