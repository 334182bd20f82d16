"""Memory at ImageNet size: the batch ``aegis`` chooses for ResNet-50 at 224×224, the peak
memory each member of ``standard`` reaches at that batch, and (``--end-to-end``) the whole
``aegis attack --attack standard`` command on 256 images, under ``/usr/bin/time``.

Run by hand (never in the test suite):

    .venv/bin/python bench/bench_memory.py [--model resnet50] [--end-to-end] [--n 256]
        [--skip-members]

Random weights (seed 0): memory does not depend on them. Each member runs in a fresh process
(so its peak RSS is its own) on one batch of the chosen size at ε = 0.5/255, where a
random-weight ResNet's near-constant logits do not flip, so every member works on every point
(budgets cut to 2 steps / 2 targets / 20 queries: the peak is reached in the first step). The
end-to-end run uses 256 crops of scikit-learn's two sample photos as an unlabeled ``.npz``
(uint8 NHWC) and the model's own predictions as labels, at ε = 16/255.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aegis.attacks.ensembles import STANDARD
from aegis.executors.memory import MEMORY_SHARE, free_bytes, plan_batch, point_bytes
from aegis.model import Classifier, ModelInfo
from aegis.registry import create
from aegis.threat import ThreatModel
from aegis.zoo.architectures import ARCHITECTURES

CUT = {"steps": 2, "target_classes": 2, "queries": 20}


def classifier(name: str) -> Classifier:
    torch.manual_seed(0)
    module = ARCHITECTURES.get(name)().eval()
    side, classes = (224, 1000) if name == "resnet50" else (32, 10)
    return Classifier(module, ModelInfo(num_classes=classes, input_shape=(3, side, side)))


def member(name: str, model_name: str, batch: int) -> None:
    """One member of ``standard`` on one batch; prints its JSON line (run in a child)."""
    clf = classifier(model_name)
    x = torch.rand(batch, *clf.input_shape, generator=torch.Generator().manual_seed(1))
    y = clf.predict(x)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = dict(next(p for n, p in STANDARD.members["linf"] if n == name))
    params.update({k: v for k, v in CUT.items() if k in params})
    t0 = time.perf_counter()
    create(name, **params)(clf, x, y, ThreatModel("linf", 0.5 / 255))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak": peak, "growth": peak - base, "s": time.perf_counter() - t0}))


def members(model_name: str) -> int:
    clf = classifier(model_name)
    x = torch.rand(4, *clf.input_shape)
    suite = [create(n, **p) for n, p in STANDARD.members["linf"]]
    plan = plan_batch(clf, x, suite)
    free = free_bytes(clf.device) or 0
    per = point_bytes(clf, x) or 0
    print(f"{model_name}: {per / 2**20:.0f} MiB a point (estimate), {free / 2**30:.1f} GiB free, "
          f"share {MEMORY_SHARE}: batch {plan.size} ({plan.chosen_by}); budget "
          f"{MEMORY_SHARE * free / 2**30:.1f} GiB")  # fmt: skip
    print(f"{'member':<8} {'peak RSS GiB':>12} {'growth GiB':>10} {'MiB/point':>9} {'s':>6}")
    for name, _ in STANDARD.members["linf"]:
        out = subprocess.run(
            [sys.executable, __file__, "--member", name, "--model", model_name,
             "--batch", str(plan.size)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:<8} {row['peak'] / 2**30:>12.2f} {row['growth'] / 2**30:>10.2f} "
              f"{row['growth'] / plan.size / 2**20:>9.0f} {row['s']:>6.1f}",
              flush=True)  # fmt: skip
    return plan.size


def end_to_end(model_name: str, n: int) -> None:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    crops = []
    for i in range(n):
        img = photos[i % len(photos)]
        top, left = rng.integers(0, img.shape[0] - 224), rng.integers(0, img.shape[1] - 224)
        crops.append(img[top : top + 224, left : left + 224])
    with tempfile.TemporaryDirectory() as tmp:
        data, weights, out = Path(tmp, "crops.npz"), Path(tmp, "r50.pt"), Path(tmp, "run")
        np.savez(data, x=np.stack(crops).astype(np.uint8))
        torch.save(classifier(model_name).module.state_dict(), weights)  # type: ignore[union-attr]
        cmd = [
            "/usr/bin/time", "-v", str(Path(sys.executable).with_name("aegis")), "attack",
            str(weights), str(data), "--factory", f"aegis.zoo:{model_name}", "--attack",
            "standard", "--eps", "16/255", "--out", str(out),
        ]  # fmt: skip
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        rss = [ln for ln in done.stderr.splitlines() if "Maximum resident" in ln]
        print(f"\naegis attack --attack standard, {n} images: exit {done.returncode}, "
              f"{seconds:.0f} s, {rss[0].strip() if rss else 'no /usr/bin/time'}")  # fmt: skip
        if done.returncode:
            print(done.stdout[-2000:], done.stderr[-2000:])
            return
        results = json.loads((out / "results.json").read_text())
        batching = results["config"]["batching"]
        print(f"batching: {json.dumps(batching)}")
        robust = results["metrics"].get("robust_accuracy")
        print(f"robust accuracy (vs. the model's own predictions): {robust}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--member")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--end-to-end", action="store_true")
    ap.add_argument("--skip-members", action="store_true")
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    if args.member:
        return member(args.member, args.model, args.batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_members:
        members(args.model)
    if args.end_to_end:
        end_to_end(args.model, args.n)


if __name__ == "__main__":
    main()
