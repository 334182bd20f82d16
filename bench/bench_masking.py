"""Gradient-masking models: official AutoAttack, aegis ``standard`` before and after its
remedies, and a hand-written adaptive attack, on the same points.

Run by hand (never in the test suite), with a checkout of the official AutoAttack code
(https://github.com/fra31/auto-attack; never vendored):

    .venv/bin/python bench/bench_masking.py --autoattack /tmp/autoattack [--n 60] [--eps 0.3]
        [--models softmax40,quantized,noise,sign,quantized+softmax40] [--no-autoattack]

Every masking model wraps the normally trained MNIST reference CNN (``models/mnist_cnn``,
trained by aegis with a fixed seed if it is missing), which has 0% robust accuracy at ε = 0.3:

* ``softmaxT``: ``softmax(T·logits)``, a saturated softmax head (T = 10, 40, 100);
* ``quantized``: the input rounded to 5 levels (``round(4x)/4``) before the network;
* ``noise``: Gaussian noise (σ = 0.1) added to the input at every call (a randomized model);
* ``sign``: the input binarised by a sign step (``(sign(x − 0.5) + 1) / 2``);
* combinations joined by ``+`` (applied left to right, the first nearest the input).

Columns: robust accuracy (accuracy under attack) of official AutoAttack ``standard`` on the
masked model; aegis ``standard`` before its remedies (the flagged number) and after them (the
reported one); and the adaptive reference: PGD-100 (step 2.5·ε/100, one random start) written
out here on the logits, through straight-through rounding and sign (BPDA), and averaging 20
noise draws per gradient (EOT). Every accuracy is measured by predicting again on the masked
model (one noise draw for the randomized one). The target: aegis within 5 points of the
adaptive reference where AutoAttack is fooled.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from aegis.api import run_attack
from aegis.io.data import load_dataset
from aegis.model import Classifier
from aegis.zoo.train import load_reference, model_filename, train_reference

ROOT = Path(__file__).resolve().parents[1]


def _ste(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    return x + (fn(x) - x).detach()


def _quantize(v: Tensor) -> Tensor:
    return torch.round(4 * v) / 4


def _binarize(v: Tensor) -> Tensor:
    return (torch.sign(v - 0.5) + 1) / 2


STEPS = {"quantized": _quantize, "sign": _binarize}


class Masked(nn.Module):
    """The reference network behind input steps and in front of a softmax head; ``adaptive``
    builds the reference attack's view (BPDA steps, no softmax)."""

    def __init__(self, net: nn.Module, parts: list[str], *, adaptive: bool = False) -> None:
        super().__init__()
        self.net, self.parts, self.adaptive = net, parts, adaptive

    def forward(self, x: Tensor) -> Tensor:
        for part in self.parts:
            if part in STEPS:
                x = _ste(STEPS[part], x) if self.adaptive else STEPS[part](x)
            elif part == "noise":
                x = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
        z = self.net(x)
        soft = [p for p in self.parts if p.startswith("softmax")]
        if soft and not self.adaptive:
            z = torch.softmax(float(soft[0][len("softmax") :]) * z, 1)
        return z


def reference_pgd(model: Masked, x: Tensor, y: Tensor, eps: float, draws: int) -> Tensor:
    """PGD-100 with a random start on the adaptive view; EOT over ``draws`` noise draws."""
    gen = torch.Generator().manual_seed(0)
    step = 2.5 * eps / 100
    adv = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(100):
        adv.requires_grad_(True)
        loss = sum(
            nn.functional.cross_entropy(model(adv), y, reduction="sum") for _ in range(draws)
        )
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def official_autoattack(path: Path, model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    sys.path.insert(0, str(path))
    from autoattack import AutoAttack  # the official code, checked out by hand

    adversary = AutoAttack(
        model, norm="Linf", eps=eps, version="standard", verbose=False, device="cpu"
    )
    out: Tensor = adversary.run_standard_evaluation(x, y, bs=len(x))
    return out


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--autoattack", type=Path, default=Path("/tmp/autoattack"))
    ap.add_argument("--no-autoattack", action="store_true")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--models", default="softmax40,quantized,noise,sign,quantized+softmax40")
    args = ap.parse_args()
    torch.set_num_threads(2)
    path = ROOT / "models" / model_filename("mnist", None)
    if not path.is_file():
        train_reference("mnist", out_dir=path.parent)
    base = load_reference(path)
    net = base.module
    assert isinstance(net, nn.Module)
    ds = load_dataset("mnist", limit=args.n)
    x, y = torch.from_numpy(ds.x), torch.from_numpy(ds.y)
    print(
        f"MNIST reference CNN, {args.n} test points, L∞ ε = {args.eps}; clean accuracy "
        f"{accuracy(net, x, y):.1%}"
    )
    print(
        "| model | AutoAttack standard | aegis before remedy | aegis | adaptive reference "
        "| remedies | flags | aegis s | AA s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for spec in args.models.split(","):
        parts = spec.split("+")
        masked = Masked(net, parts).eval()
        view = Masked(net, parts, adaptive=True).eval()
        torch.manual_seed(0)
        adv = reference_pgd(view, x, y, args.eps, 20 if "noise" in parts else 1)
        torch.manual_seed(1)
        ref = accuracy(masked, adv, y)
        aa, aa_s = float("nan"), 0.0
        if not args.no_autoattack:
            t = time.perf_counter()
            torch.manual_seed(2)
            aa = accuracy(masked, official_autoattack(args.autoattack, masked, x, y, args.eps), y)
            aa_s = time.perf_counter() - t
        t = time.perf_counter()
        clf = Classifier(masked, base.info, name=spec)
        run = run_attack(clf, (ds.x, ds.y), attack="standard", eps=args.eps)
        secs = time.perf_counter() - t
        rem = run.results.get("remedies") or {}
        before = rem.get("naive_adversarial_accuracy", run.metrics["adversarial_accuracy"])
        flags = [f["name"] for f in run.results["sanity"] if f["flagged"]]
        print(
            f"| {spec} | {aa:.1%} | {before:.1%} | {run.metrics['adversarial_accuracy']:.1%} | "
            f"{ref:.1%} | {', '.join(rem.get('remedied', [])) or '—'} | {', '.join(flags) or '—'} "
            f"| {secs:.0f} | {aa_s:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
