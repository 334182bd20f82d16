"""A query-only check of the detector-aware attack: Square on classifier + detector.

The adaptive attack of ``aegis detect`` (``DetectorAwarePGD``) follows gradients, and through
a non-differentiable squeezer (bit depth) those are BPDA's approximations. If they mislead
it, a gradient-free attack on the same objective should get more inputs through. This runs
Square (AutoAttack's budget, 5,000 queries) on the margin of a wrapped model whose true-class
logit is raised by ``weight · relu(score − threshold + slack)``: a flagged input is pushed
back towards "correct", so Square's margin falls below 0 only near unflagged, misclassified
inputs. An input gets through if the raw model misclassifies it and the detector does not
flag it (checked afterwards, on the real criterion). Run by hand after ``make demo``:

    .venv/bin/python bench/bench_detection.py [--n 200] [--weight 10] [--bits 1] \\
        [--median-size 2] [--fit-limit 1000]

It prints the threshold (5% false positives on the clean points), how many inputs Square got
through and in what time; compare with the detector-aware PGD's figure of ``aegis detect``
on the same points (printed first, from the same process).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

from aegis.defenses.detection import FeatureSqueezing, FittedDetector, evaluate_detector
from aegis.io.data import load_dataset
from aegis.metrics import threshold_at_fpr
from aegis.model import Classifier
from aegis.registry import create
from aegis.threat import ThreatModel
from aegis.zoo.train import load_reference


class _Combined(nn.Module):
    """Logits of the model, the true class raised where the detector flags the input."""

    def __init__(
        self, detector: FittedDetector, threshold: float, weight: float, slack: float
    ) -> None:
        super().__init__()
        self.detector, self.threshold, self.weight, self.slack = detector, threshold, weight, slack
        self.labels: Tensor | None = None  # the labels of the rows being queried

    def forward(self, x: Tensor) -> Tensor:
        assert self.labels is not None
        logits, score = self.detector.logits_and_score(x)
        bump = self.weight * torch.relu(score - self.threshold + self.slack)
        return logits + bump[:, None] * nn.functional.one_hot(self.labels, logits.shape[1])


class _Labeled(Classifier):
    """A Classifier that hands the queried rows' labels to ``_Combined``."""

    batch_labels: Tensor

    def logits(
        self, x: Tensor, *, rows: Tensor | None = None, through_module: bool = False
    ) -> Tensor:
        combined = self.module
        assert isinstance(combined, _Combined)
        combined.labels = self.batch_labels if rows is None else self.batch_labels[rows]
        return super().logits(x, rows=rows, through_module=through_module)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="models/mnist_cnn.safetensors")
    ap.add_argument("--n", type=int, default=200, help="first N MNIST test points")
    ap.add_argument("--fit-limit", type=int, default=1000, help="train images to fit on")
    ap.add_argument("--bits", type=int, default=1)
    ap.add_argument("--median-size", type=int, default=2)
    ap.add_argument("--weight", type=float, default=10.0, help="penalty on the detector score")
    ap.add_argument("--slack", type=float, default=0.02, help="aim this far below threshold")
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--skip-pgd", action="store_true", help="do not run the PGD reference")
    args = ap.parse_args()
    torch.set_num_threads(1)
    clf = load_reference(args.model)
    fit_x = load_dataset("mnist", split="train").subset(args.fit_limit).tensors()[0]
    det = FeatureSqueezing(bits=args.bits, median_size=args.median_size).fit(clf, fit_x)
    x, y = load_dataset("mnist", split="test").subset(args.n).tensors()
    assert y is not None
    threat = ThreatModel("linf", args.eps)
    t = threshold_at_fpr(det.score(x).numpy().astype("float64"), 0.05)
    print(f"squeeze bits {args.bits} median {args.median_size}: threshold {t:.4f}", flush=True)
    if not args.skip_pgd:
        t0 = time.perf_counter()
        rep = evaluate_detector(clf, det, x, y, create("pgd"), threat, seed=0)
        through = round((1 - rep["adaptive"]["tpr"]) * rep["adaptive"]["successful"])
        print(
            f"detector-aware PGD: {through}/{args.n} through, combined robust accuracy "
            f"{rep['worst_case']['robust_accuracy']:.3f} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    combined = _Combined(det, t, args.weight, args.slack)
    wrapped = _Labeled(combined, clf.info, name="classifier+detector")
    square = create("square")
    t0 = time.perf_counter()
    parts = []
    for i in range(0, args.n, args.batch):
        wrapped.batch_labels = y[i : i + args.batch]
        gen = torch.Generator().manual_seed(i)
        parts.append(square(wrapped, x[i : i + args.batch], y[i : i + args.batch], threat,
                            generator=gen))  # fmt: skip
    adv = torch.cat(parts)
    got = (clf.predict(adv) != y) & (det.score(adv) <= t)
    linf = float((adv - x).abs().amax())
    print(
        f"Square on the combined objective (weight {args.weight}, 5,000 queries): "
        f"{int(got.sum())}/{args.n} through in {time.perf_counter() - t0:.0f} s "
        f"(max L∞ {linf:.3f})"
    )


if __name__ == "__main__":
    main()
