"""Robust training: aegis' defenses against ART's trainers, same data, model, epochs and ε.

Each trainer fits ``aegis.zoo.architectures.mnist_cnn`` on the built-in MNIST train split (the
trainer's 4,000 images) at ε = 0.3 L∞ with batch size 64, then every model is scored on the
same first N test points by the same aegis attack: APGD-CE (100 steps) followed by APGD-T
(100 steps × 9 target classes) on the points APGD-CE did not break — per-sample worst case;
``--suite standard`` adds FAB-T and Square (AutoAttack's standard suite, about 4× the time).

Pairs (aegis ↔ ART):
  pgd-at  ↔ AdversarialTrainerMadryPGD        (10-step PGD, step 2.5·ε/10 for both)
  trades  ↔ AdversarialTrainerTRADESPyTorch   (β = 6; ART crafts with its CE PGD, 10 steps)
  fast-at ↔ AdversarialTrainerFBFPyTorch      (FGSM from a random start; step 1.0·ε in
                                               aegis' MNIST recipe, 1.25·ε in ART's FBF)
  mart    ↔ (no ART counterpart)

aegis trains with its recipe (Adam, one-cycle LR peaking at 2e-3, 6e-3 for trades, ε ramped over
the first 40% of the steps; fast-at: SGD with momentum 0.9 and no weight decay, one-cycle
peak 0.2, full ε from the start and no dropout, since with Adam it overfitted catastrophically);
ART's trainers with theirs: Adam at a constant 2e-3 for Madry and TRADES, and SGD (momentum
0.9) for FBF, whose own schedule sets the LR (a triangle peaking at 0.21; FBF also clips the
gradient norm to 0.5, and, since ART's loss_gradient leaves the model in eval mode, trains
without dropout).
Wall time is the training only (not the evaluation). Run by hand, one thread:

    .venv/bin/python bench/bench_training.py [--epochs 10] [--aegis-epochs 10] [--n 500] \
        [--seeds 0,1,2] [--defenses fast-at,trades,pgd-at,mart] [--peers art] \
        [--out /tmp/bench_training]

``--epochs`` is ART's number of epochs and, unless ``--aegis-epochs`` says otherwise, aegis'
too: "more aegis epochs in no more wall time" is measured side by side in one process. Each
trainer runs once per seed (aegis through ``train_reference(seed=...)``, ART through torch's
and numpy's global seeds), aegis and ART alternating per seed so both see the same machine.
The summary gives, per pair, the medians over the seeds of robust accuracy, clean accuracy
and train seconds, the ratios aegis / ART of those medians and a verdict against the target
"at least ART's robust accuracy in no more wall time".

Every finished trainer appends one JSON line to ``<out>/results.jsonl`` (with its seed, its
epochs and the load average before and after training) so that a long run that is cut short
keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aegis.attacks.ensembles import STANDARD
from aegis.engine import evaluate
from aegis.io.data import load_dataset
from aegis.model import Classifier, ModelInfo
from aegis.registry import create
from aegis.threat import ThreatModel
from aegis.zoo.architectures import mnist_cnn
from aegis.zoo.train import RECIPES, load_reference, train_reference

EPS, BATCH, LR, STEPS = 0.3, 64, 2e-3, 10
ART_PEER = {"pgd-at": "art-madry-pgd", "trades": "art-trades", "fast-at": "art-fbf"}


SUITES = {
    # APGD-CE then APGD-T: the default, for time
    "apgd": (("apgd-ce", {"steps": 100}), ("apgd-t", {"steps": 100})),
    # AutoAttack's standard suite with its budgets (adds FAB-T and Square; ~4x the time)
    "standard": STANDARD.members["linf"],
}


def robust_eval(
    clf: Classifier, x: torch.Tensor, y: torch.Tensor, suite: str = "apgd"
) -> dict[str, float]:
    attacks = [create(name, **kw) for name, kw in SUITES[suite]]
    t0 = time.perf_counter()
    ev = evaluate(clf, x, y, attacks, ThreatModel("linf", EPS), seed=0)
    rec = ev.records
    clean = rec.clean_pred == rec.y
    return {
        "clean_accuracy": float(clean.mean()),
        "robust_accuracy": float((clean & ~rec.success).mean()),
        "eval_seconds": time.perf_counter() - t0,
    }


def train_aegis(defense: str, epochs: int, out: Path, seed: int = 0) -> tuple[Classifier, float]:
    result = train_reference(
        "mnist",
        out_dir=out / f"seed{seed}",
        defense=defense,
        epochs=epochs,
        seed=seed,
        eps=EPS,
        batch_size=BATCH,
        progress=False,
        force=True,
        eval_steps=1,  # the trainer's own PGD score is not used here
    )
    meta = json.loads(result.sidecar_path.read_text())
    return load_reference(result.model_path), float(meta["train_seconds"])


def train_art(peer: str, epochs: int, seed: int = 0) -> tuple[Classifier, float]:
    from art.attacks.evasion import ProjectedGradientDescent
    from art.defences.trainer import (
        AdversarialTrainerFBFPyTorch,
        AdversarialTrainerMadryPGD,
        AdversarialTrainerTRADESPyTorch,
    )
    from art.estimators.classification import PyTorchClassifier

    torch.manual_seed(seed)
    np.random.seed(seed)
    train = load_dataset("mnist", split="train")
    xt, yt = train.tensors()
    assert yt is not None
    x, y = xt.numpy().astype(np.float32), np.eye(10, dtype=np.float32)[yt.numpy()]  # one-hot
    net = mnist_cnn()
    opt: torch.optim.Optimizer = (
        torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9)
        if peer == "art-fbf"
        else torch.optim.Adam(net.parameters(), lr=LR)
    )
    art_clf = PyTorchClassifier(
        model=net,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=opt,
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    step = 2.5 * EPS / STEPS
    t0 = time.perf_counter()
    if peer == "art-madry-pgd":
        madry = AdversarialTrainerMadryPGD(
            art_clf, nb_epochs=epochs, batch_size=BATCH, eps=EPS, eps_step=step, max_iter=STEPS
        )
        madry.fit(x, y)
    elif peer == "art-trades":
        pgd = ProjectedGradientDescent(
            art_clf,
            norm=np.inf,
            eps=EPS,
            eps_step=step,
            max_iter=STEPS,
            batch_size=BATCH,
            verbose=False,
        )
        AdversarialTrainerTRADESPyTorch(art_clf, pgd, beta=6.0).fit(
            x, y, batch_size=BATCH, nb_epochs=epochs
        )
    elif peer == "art-fbf":
        AdversarialTrainerFBFPyTorch(art_clf, eps=EPS).fit(x, y, batch_size=BATCH, nb_epochs=epochs)
    else:
        raise SystemExit(f"unknown peer {peer}")
    seconds = time.perf_counter() - t0
    net.eval()
    info = ModelInfo(num_classes=10, input_shape=(1, 28, 28))
    return Classifier(net, info, name=peer), seconds


def load_average() -> float:
    """The 1-minute load average (the machine is shared: it says how far to trust seconds)."""
    return os.getloadavg()[0]


def verdict(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> str:
    """One line against the target: at least ART's median robust accuracy in no more median
    wall time."""
    rob = statistics.median(r["robust_accuracy"] for r in ours)
    rob_art = statistics.median(r["robust_accuracy"] for r in theirs)
    sec = statistics.median(r["train_seconds"] for r in ours)
    sec_art = statistics.median(r["train_seconds"] for r in theirs)
    met = rob >= rob_art and sec <= sec_art
    why = [
        f"robust {rob:.3f} {'>=' if rob >= rob_art else '<'} {rob_art:.3f}",
        f"time {sec:.1f} s {'<=' if sec <= sec_art else '>'} {sec_art:.1f} s",
    ]
    return f"{'MET' if met else 'NOT MET'} ({', '.join(why)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--epochs",
        type=int,
        default=RECIPES["mnist"].adv_epochs,
        help="ART's epochs (and aegis' unless --aegis-epochs is given)",
    )
    ap.add_argument("--aegis-epochs", type=int, default=None, help="aegis' epochs")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    ap.add_argument("--n", type=int, default=500, help="test points for the robust accuracy")
    ap.add_argument("--defenses", default="fast-at,trades,pgd-at,mart")
    ap.add_argument("--peers", default="art", help="'art' to train ART's counterparts, 'none'")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_training"))
    ap.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default="apgd",
        help="the scoring attack: apgd (APGD-CE then APGD-T) or standard (+ FAB-T and Square)",
    )
    args = ap.parse_args()
    aegis_epochs = args.aegis_epochs if args.aegis_epochs is not None else args.epochs
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds:
        raise SystemExit("--seeds needs at least one seed")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "results.jsonl"
    test = load_dataset("mnist", split="test").subset(args.n)
    x, y = test.tensors()
    assert y is not None

    rows: dict[str, list[dict[str, Any]]] = {}

    def record(
        name: str, clf: Classifier, seconds: float, *, seed: int, epochs: int, load: float
    ) -> None:
        load_after = load_average()
        row = {"trainer": name, "seed": seed, "train_seconds": seconds}
        row.update(robust_eval(clf, x, y, args.suite), suite=args.suite)
        row.update(
            epochs=epochs,
            art_epochs=args.epochs,
            aegis_epochs=aegis_epochs,
            n=args.n,
            eps=EPS,
            threads=torch.get_num_threads(),
            load_before=load,
            load_after=load_after,
        )
        rows.setdefault(name, []).append(row)
        with log_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(
            f"{name:16s} seed {seed}  {epochs:2d} ep  train {seconds:8.1f} s  "
            f"clean {row['clean_accuracy']:.3f}  robust {row['robust_accuracy']:.3f}  "
            f"(eval {row['eval_seconds']:.0f} s, load {load:.2f} -> {load_after:.2f})",
            flush=True,
        )

    for defense in [d.strip() for d in args.defenses.split(",") if d.strip()]:
        peer = ART_PEER.get(defense) if args.peers == "art" else None
        for seed in seeds:
            load = load_average()
            clf, seconds = train_aegis(defense, aegis_epochs, args.out, seed)
            record(f"aegis {defense}", clf, seconds, seed=seed, epochs=aegis_epochs, load=load)
            if peer is not None:
                load = load_average()
                clf, seconds = train_art(peer, args.epochs, seed)
                record(peer, clf, seconds, seed=seed, epochs=args.epochs, load=load)

    print(
        f"\nMNIST 4,000 train / first {args.n} test, eps {EPS} linf, aegis {aegis_epochs} "
        f"epochs, ART {args.epochs} epochs, seeds {args.seeds}, "
        f"suite {args.suite}: {' then '.join(n for n, _ in SUITES[args.suite])} (per-sample "
        "worst case), 1 thread; medians over seeds"
    )
    print(f"{'trainer':16s} {'robust':>7s} {'clean':>7s} {'seconds':>8s}")
    for name, group in rows.items():
        print(
            f"{name:16s} {statistics.median(r['robust_accuracy'] for r in group):7.3f} "
            f"{statistics.median(r['clean_accuracy'] for r in group):7.3f} "
            f"{statistics.median(r['train_seconds'] for r in group):8.1f}"
        )
    print(f"\n{'pair':28s} {'robust ÷ ART':>12s} {'time ÷ ART':>10s}  verdict")
    for defense, peer in ART_PEER.items():
        ours, theirs = rows.get(f"aegis {defense}"), rows.get(peer)
        if ours is None or theirs is None:
            continue
        rob = statistics.median(r["robust_accuracy"] for r in ours)
        rob_art = statistics.median(r["robust_accuracy"] for r in theirs)
        ratio = rob / rob_art if rob_art > 0 else float("inf")
        time_ratio = statistics.median(r["train_seconds"] for r in ours) / statistics.median(
            r["train_seconds"] for r in theirs
        )
        pair = f"{defense} / {peer}"
        print(f"{pair:28s} {ratio:12.3f} {time_ratio:10.3f}  {verdict(ours, theirs)}")


if __name__ == "__main__":
    main()
