"""Square on an opaque softmax model: scoring probabilities vs their log (the remedy) vs the
logits, on the same points.

Run by hand (never in the test suite):

    .venv/bin/python bench/bench_logscores.py [--n 100] [--eps 0.1] [--queries 1000]

The model is the digits reference CNN (trained by aegis with a fixed seed if missing) behind
``softmax(T·logits)``, given to aegis as a plain query function: no graph to recover and no
float64 copy to make, so the only remedy left for score-based attacks is the clamped log.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from aegis.api import run_attack
from aegis.io.data import load_dataset
from aegis.model import Classifier
from aegis.zoo.train import load_reference, model_filename, train_reference

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args()
    path = ROOT / "models" / model_filename("digits", None)
    if not path.is_file():
        train_reference("digits", out_dir=path.parent)
    base = load_reference(path)
    net = base.module
    assert isinstance(net, torch.nn.Module)
    ds = load_dataset("digits", limit=args.n)
    kw = {"attack": "square", "eps": args.eps, "queries": args.queries}
    logits = run_attack(base, (ds.x, ds.y), **kw).metrics["adversarial_accuracy"]  # type: ignore[arg-type]
    print(f"digits CNN, {args.n} points, L∞ ε = {args.eps}, Square {args.queries} queries")
    print("| T | Square on probabilities | Square on log-probabilities | Square on the logits |")
    print("|---|---|---|---|")
    for t in (10.0, 40.0):

        def query(arr: np.ndarray, t: float = t) -> np.ndarray:
            with torch.no_grad():
                return torch.softmax(t * net(torch.from_numpy(arr)), 1).numpy()

        opaque = Classifier(None, base.info, query_fn=query, name=f"softmax{t:g}")
        rem = run_attack(opaque, (ds.x, ds.y), **kw).results["remedies"]  # type: ignore[arg-type]
        print(
            f"| {t:g} | {rem['naive_adversarial_accuracy']:.0%} | "
            f"{rem['remedied_adversarial_accuracy']:.0%} | {logits:.0%} |"
        )


if __name__ == "__main__":
    main()
