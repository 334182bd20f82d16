"""The same PGD-40 evaluation on the local executor and on Ray workers, in one run.

Local: this process with ``--threads`` torch threads (default 2), and with 1 thread. Ray:
``--workers`` workers (default 2) of a local Ray instance, each with its share of the CPUs as
torch threads (1 each on 2 cores). All evaluate the first ``--n`` MNIST test points with the
reference CNN in batches of ``--batch-size``, timed in turns (round robin), median of
``--repeats``; the Ray time includes starting the workers and shipping them the model (every
evaluation pays it), not starting Ray itself (once per process, printed apart). The records
of every run must be those of the first local run: the script exits 1 if not. Run by hand:

    .venv/bin/python bench/bench_ray.py [--model models/mnist_cnn.safetensors] [--n 500]
        [--no-early-stop] [--repeats 3]

``aegis train --dataset mnist --out models`` builds the reference model if it is missing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from aegis.engine import Evaluation, evaluate
from aegis.executors import Executor, LocalExecutor
from aegis.executors.distributed import RayExecutor
from aegis.io.data import load_dataset
from aegis.io.models import load_classifier
from aegis.metrics import adversarial_accuracy
from aegis.records import Records
from aegis.registry import create
from aegis.threat import ThreatModel

STEPS, EPS, ALPHA = 40, 0.3, 0.01


def same(a: Evaluation, b: Evaluation) -> bool:
    """Every record field but wall time, and the adversarial inputs, bit for bit."""
    return np.array_equal(a.x_adv, b.x_adv) and all(
        np.array_equal(getattr(a.records, f.name), getattr(b.records, f.name))
        for f in fields(Records)
        if f.name != "seconds"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=Path("models/mnist_cnn.safetensors"))
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=125)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the local run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-early-stop", action="store_true", help="every step on every point")
    args = ap.parse_args()

    clf = load_classifier(str(args.model))
    ds = load_dataset("mnist", split="test").subset(args.n)
    x, y = ds.tensors()
    attack = create("pgd", steps=STEPS, step_size=ALPHA, early_stop=not args.no_early_stop)
    threat = ThreatModel("linf", EPS)

    ray_executor = RayExecutor(workers=args.workers)
    t0 = time.perf_counter()
    plan = ray_executor.connect()
    ray_start = time.perf_counter() - t0
    local = f"local, {args.threads} torch threads"
    distributed = f"ray, {plan.workers} workers x {plan.threads} thread(s)"
    # (executor, torch threads of this process); the single-thread row shows what the
    # local run's second thread buys.
    runs: dict[str, tuple[Executor, int]] = {
        local: (LocalExecutor(), args.threads),
        "local, 1 torch thread": (LocalExecutor(), 1),
        distributed: (ray_executor, args.threads),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    reference: Evaluation | None = None
    identical = True
    load = [os.getloadavg()]
    for _ in range(args.repeats):
        for label, (ex, threads) in runs.items():
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            ev = evaluate(
                clf, x, y, attack, threat, batch_size=args.batch_size, seed=0, executor=ex
            )
            times[label].append(time.perf_counter() - t0)
            reference = reference or ev
            identical &= same(reference, ev)
    load.append(os.getloadavg())

    assert reference is not None
    medians = {k: statistics.median(v) for k, v in times.items()}
    robust = adversarial_accuracy(reference.records)
    print(
        f"PGD-40 L∞ ε={EPS} α={ALPHA}{' (no early stop)' if args.no_early_stop else ''} on "
        f"{args.n} MNIST test points (batches of {args.batch_size}), {args.model.name}, "
        f"median of {args.repeats}; {os.cpu_count()} CPUs, load average "
        f"{load[0][0]:.2f} before, {load[1][0]:.2f} after"
    )
    print(f"Ray start (once per process): {ray_start:.2f} s; accuracy under attack {robust}")
    for label, t in medians.items():
        runs = ", ".join(f"{v:.2f}" for v in times[label])
        print(f"{label:36s} {t:8.2f} s   (runs: {runs})")
    print(f"speed-up ({local} ÷ ray): {medians[local] / medians[distributed]:.2f}x")
    print(f"records identical to the first local run: {'yes' if identical else 'NO'}")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
