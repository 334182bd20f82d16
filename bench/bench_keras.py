"""A Keras CNN on Keras' torch backend against the same CNN in torch (same weights): the time
per forward + input gradient, and PGD-10 through ``aegis.engine.evaluate``.

Run by hand (never in the test suite):

    KERAS_BACKEND=torch .venv/bin/python bench/bench_keras.py [--batch 128] [--repeats 7]
        [--n-pgd 256]

The Keras model (an MNIST-style CNN: two Conv2D + MaxPooling2D, Flatten, two Dense) is saved as
``.keras`` and loaded with :func:`aegis.io.models.load_classifier`, as a user would. The torch
module is built here with the Keras weights copied across (NCHW, so its first Dense takes the
Keras NHWC flatten order), and checked to give the same logits. Rows:

- aegis ``value_and_grad`` on the Keras-loaded Classifier (whatever path the loader chose;
  ``provenance["keras_path"]`` says which), and on the same Keras model called through keras
  (``_KerasModule``, the path before the torch conversion);
- aegis ``value_and_grad`` on the torch module;
- floors: plain torch forward + input gradient, and the same through a plain Keras call;
- PGD-10 (L∞ ε=0.3, early stop off, labels = the model's predictions) through ``evaluate``.

Prints milliseconds per batch (median, timed in turns) and ratios Keras / torch.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
import torch
import torch.nn.functional as F
from _timing import timed
from torch import Tensor, nn

from aegis.engine import evaluate
from aegis.io.keras_format import _KerasModule
from aegis.io.models import load_classifier
from aegis.model import Classifier, ModelInfo
from aegis.registry import create
from aegis.threat import ThreatModel

STEPS, EPS = 10, 0.3


def keras_cnn() -> Any:
    layers = keras.layers
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(10),
        ]
    )


def torch_twin(model: Any) -> nn.Module:
    """The same CNN in torch (NCHW), the Keras weights copied across."""
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(1600, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    w = [torch.as_tensor(np.asarray(a)) for a in model.get_weights()]
    with torch.no_grad():
        for conv, (k, b) in zip((net[0], net[3]), ((w[0], w[1]), (w[2], w[3])), strict=True):
            conv.weight.copy_(k.permute(3, 2, 0, 1))  # (kh, kw, in, out) -> (out, in, kh, kw)
            conv.bias.copy_(b)
        # Keras flattens (5, 5, 64) in HWC order, torch (64, 5, 5) in CHW order.
        dense = w[4].reshape(5, 5, 64, 128).permute(2, 0, 1, 3).reshape(1600, 128)
        net[7].weight.copy_(dense.T)
        net[7].bias.copy_(w[5])
        net[9].weight.copy_(w[6].T)
        net[9].bias.copy_(w[7])
    return net.eval()


def grad_step(module: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    """One forward + input gradient of the cross-entropy (the least a gradient step costs)."""
    xg = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(module(xg), y, reduction="sum"), xg)
    return g


def bench(batch: int, repeats: int, n_pgd: int) -> None:
    model = keras_cnn()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "cnn.keras"
        model.save(str(path))
        clf_k = load_classifier(path)
    net = torch_twin(model)
    clf_t = Classifier(net, ModelInfo(num_classes=10, input_shape=(1, 28, 28)), name="torch")
    clf_raw = Classifier(_KerasModule(model), clf_k.info, name="keras-call")  # the same weights
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(max(batch, n_pgd), 1, 28, 28, generator=gen)
    xb = x[:batch]
    with torch.no_grad():
        ref = net(xb)
        y_all = net(x).argmax(1)
    error = float((clf_k.logits(xb) - ref).abs().max())
    print(f"max |keras-loaded − torch| logits: {error:.2e} (must be < 1e-4)")
    if error > 1e-4:
        raise SystemExit("the torch twin does not match the Keras model")
    print(f"loader's path: {clf_k.provenance.get('keras_path', 'keras call (no conversion)')}")
    y = y_all[:batch]

    def ce(z: Tensor) -> Tensor:
        return F.cross_entropy(z, y, reduction="none")

    def nhwc_keras(z: Tensor) -> Tensor:
        return model(z.permute(0, 2, 3, 1), training=False)  # type: ignore[no-any-return]

    fns: dict[str, Callable[[], object]] = {
        "aegis value_and_grad, keras-loaded": lambda: clf_k.value_and_grad(xb, ce),
        "aegis value_and_grad, keras call": lambda: clf_raw.value_and_grad(xb, ce),
        "aegis value_and_grad, torch": lambda: clf_t.value_and_grad(xb, ce),
        "floor: plain keras fwd + input grad": lambda: grad_step(nhwc_keras, xb, y),
        "floor: plain torch fwd + input grad": lambda: grad_step(net, xb, y),
    }
    t = timed(fns, repeats)
    base = t["floor: plain torch fwd + input grad"]
    torch_aegis = t["aegis value_and_grad, torch"]
    print(f"\nforward + input gradient, batch {batch} (ms, median of {repeats})")
    print(f"{'':40s} {'ms':>8s} {'÷ floor':>8s} {'÷ aegis torch':>14s}")
    for label, secs in t.items():
        ms = 1000 * secs
        print(f"{label:40s} {ms:8.2f} {secs / base:8.2f} {secs / torch_aegis:14.2f}")

    pgd = create("pgd", steps=STEPS, early_stop=False)
    threat = ThreatModel("linf", EPS)
    xp, yp = x[:n_pgd], y_all[:n_pgd]

    def run(clf: Classifier) -> Callable[[], object]:
        return lambda: evaluate(clf, xp, yp, pgd, threat, batch_size=batch)

    runs = {"keras-loaded": run(clf_k), "keras call": run(clf_raw), "torch": run(clf_t)}
    p = timed(runs, max(1, repeats // 3))
    print(f"\nPGD-{STEPS} through evaluate, {n_pgd} points in batches of {batch} (s)")
    for label, secs in p.items():
        print(f"{label:40s} {secs:8.2f} {secs / p['torch']:8.2f} × torch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--n-pgd", type=int, default=256)
    args = ap.parse_args()
    print(
        f"keras {keras.__version__} (backend {keras.backend.backend()}), torch "
        f"{torch.__version__}, CPU, {torch.get_num_threads()} torch threads"
    )
    bench(args.batch, args.repeats, args.n_pgd)


if __name__ == "__main__":
    main()
