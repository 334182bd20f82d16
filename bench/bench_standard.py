"""aegis ``standard`` against the official AutoAttack at CIFAR size, on the same points, in one
run: wall time and robust accuracy.

Run by hand (never in the test suite), with a checkout of the official AutoAttack code
(https://github.com/fra31/auto-attack; never vendored):

    .venv/bin/python bench/bench_standard.py --autoattack /tmp/autoattack
        [--model resnet18_cifar] [--n 100] [--eps 10] [--batch-size 100] [--order aegis,aa]

The model is a zoo architecture with random weights (seed 0; timing does not depend on the
weights). A random-weight ResNet's logits barely move with the input, so ε (in 1/255 units)
is chosen for a mix of points: most fall to APGD-CE's first steps and the rest go through the
whole suite, where the time goes. The labels are the model's own predictions, so every point
is attacked. Both run L∞ ``standard`` (APGD-CE, APGD-T, FAB-T, Square at AutoAttack's budgets)
in batches of ``--batch-size`` on the CPU. Robust accuracy is measured by predicting again on
each returned batch; every returned input is audited for the budget and the box.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from aegis.attacks.ensembles import STANDARD
from aegis.engine import evaluate
from aegis.model import Classifier, ModelInfo
from aegis.registry import create
from aegis.threat import ThreatModel
from aegis.zoo.architectures import ARCHITECTURES


def official(path: Path, model: nn.Module, x: Tensor, y: Tensor, eps: float, bs: int) -> Tensor:
    sys.path.insert(0, str(path))
    from autoattack import AutoAttack  # the official code, checked out by hand

    adversary = AutoAttack(
        model, norm="Linf", eps=eps, version="standard", verbose=True, device="cpu"
    )
    out: Tensor = adversary.run_standard_evaluation(x, y, bs=bs)
    return out


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--autoattack", type=Path, default=Path("/tmp/autoattack"))
    ap.add_argument("--model", default="resnet18_cifar")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=10.0, help="L-inf budget in 1/255 units")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--order", default="aegis,aa", help="which runs first")
    args = ap.parse_args()

    torch.manual_seed(0)
    net = ARCHITECTURES.get(args.model)().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.rand(args.n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    eps = args.eps / 255
    clf = Classifier(net, ModelInfo(num_classes=10, input_shape=(3, 32, 32)))
    suite = [create(name, **params) for name, params in STANDARD.members["linf"]]
    print(
        f"{args.model}, random weights, {args.n} points, L-inf eps = {args.eps}/255, "
        f"batch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    rows: dict[str, tuple[float, float]] = {}
    for who in args.order.split(","):
        t0 = time.perf_counter()
        if who == "aegis":
            run = evaluate(clf, x, y, suite, ThreatModel("linf", eps), batch_size=args.batch_size)
            acc = float(1 - run.records.success.mean())
            seconds = time.perf_counter() - t0
            by = run.records.attack_index[run.records.success]
            print(f"aegis: fooled by member {torch.bincount(torch.from_numpy(by), minlength=4)}")
        else:
            x_adv = official(args.autoattack, net, x, y, eps, args.batch_size)
            seconds = time.perf_counter() - t0
            assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
            acc = accuracy(net, x_adv, y)
        rows[who] = (seconds, acc)
        print(f"{who}: {seconds:.1f} s, robust accuracy {100 * acc:.1f}%", flush=True)
    if {"aegis", "aa"} <= rows.keys():
        (ta, aa_acc), (tb, ae_acc) = rows["aa"], rows["aegis"]
        print(
            f"\naegis / AutoAttack wall time: {tb / ta:.2f}x (target <= 0.5x); robust accuracy "
            f"aegis {100 * ae_acc:.1f}% vs AutoAttack {100 * aa_acc:.1f}% "
            f"(target: aegis <= AutoAttack + 0.5 pp)"
        )


if __name__ == "__main__":
    main()
