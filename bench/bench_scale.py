"""PGD-10 at CIFAR and ImageNet size: aegis against the compute floor and torchattacks, in one
run, on the same inputs and model (random weights: timing does not depend on them).

Run by hand (never in the test suite):

    .venv/bin/python bench/bench_scale.py [--models resnet18_cifar,wrn_28_10,resnet50]
        [--n 32] [--n-imagenet 4] [--repeats 3]

The floor is 10 × (forward + input gradient) of the same module on the same batch in a plain
loop, the least any 10-step gradient attack can cost. Early stopping is off for aegis (a
random-weight model is fooled at once, which would time nothing), so every row does all its
steps. Prints seconds (median, timed in turns), ratios to the floor and to torchattacks' PGD,
and seconds per image. torchattacks installs with ``pip install --no-deps torchattacks``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import timed

from aegis.model import Classifier, ModelInfo
from aegis.registry import create
from aegis.threat import ThreatModel
from aegis.zoo.architectures import ARCHITECTURES

STEPS, EPS = 10, 8 / 255
ALPHA = 2.5 * EPS / STEPS


def bench(name: str, n: int, repeats: int) -> None:
    torch.manual_seed(0)
    module = ARCHITECTURES.get(name)().eval()
    side = 224 if name == "resnet50" else 32
    classes = 1000 if name == "resnet50" else 10
    x = torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = module(x).argmax(1)  # the model's own predictions: every point is attacked
    clf = Classifier(module, ModelInfo(num_classes=classes, input_shape=(3, side, side)))

    def floor() -> torch.Tensor:
        xa = x.clone()
        for _ in range(STEPS):
            xg = xa.requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(module(xg), y, reduction="sum"), xg)
            xa = xg.detach()
        return xa + 0 * g

    pgd = create("pgd", steps=STEPS, step_size=ALPHA, early_stop=False)
    threat = ThreatModel("linf", EPS)
    fns: dict[str, Callable[[], torch.Tensor]] = {
        "floor: 10 × (fwd + input grad)": floor,
        "aegis pgd (no early stop)": lambda: pgd(
            clf, x, y, threat, generator=torch.Generator().manual_seed(0)
        ),
    }
    try:
        import torchattacks

        ta = torchattacks.PGD(module, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)
        fns[f"torchattacks {torchattacks.__version__} PGD"] = lambda: ta(x, y)
    except ImportError:
        print("torchattacks is not installed: pip install --no-deps torchattacks")
    t = timed(fns, repeats)
    base = t["floor: 10 × (fwd + input grad)"]
    peer = list(t.values())[-1]
    params = sum(p.numel() for p in module.parameters()) / 1e6
    print(f"\n{name} ({params:.1f} M parameters), {n} inputs of 3×{side}×{side}, batch {n}")
    print(f"{'':40s} {'seconds':>8s} {'÷ floor':>8s} {'÷ peer':>8s} {'s/image':>8s}")
    for label, secs in t.items():
        print(f"{label:40s} {secs:8.2f} {secs / base:8.3f} {secs / peer:8.3f} {secs / n:8.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18_cifar,wrn_28_10,resnet50")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--n-imagenet", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(
        f"PGD-{STEPS} L∞ ε=8/255, step 2.5·ε/{STEPS}, CPU, {torch.get_num_threads()} torch "
        f"threads, median of {args.repeats}"
    )
    for name in args.models.split(","):
        bench(name, args.n_imagenet if name == "resnet50" else args.n, args.repeats)


if __name__ == "__main__":
    main()
