"""The onnx package's "light" ImageNet graphs through aegis' ONNX → torch converter, against
onnxruntime, in one run. Run by hand:

    .venv/bin/python bench/bench_onnx_zoo.py [--repeats 5] [--graphs vgg19 resnet50 ...]

For each graph it prints: white-box (does the shipped file load as aegis' torch module, not the
onnxruntime fallback), the largest relative error ``max |ours - ort| / max |ort|`` of the logits
against onnxruntime on one random 224×224 input, and the median wall time of aegis' forward +
input gradient (``Classifier.value_and_grad``) and of its forward alone, next to onnxruntime's
forward (default session options, but no spinning of idle threads, which would steal the cores
from torch) measured in the same run, in turns. The shipped graphs build
every weight from the constant 0.02 (their softmax is 1/1000 whatever the input), so errors and
times are measured on the same graphs with seeded random weights and without the final softmax
(the helpers of ``tests/test_onnx_zoo.py``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from _timing import timed

from aegis.io.models import load_classifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_onnx_zoo import (
    GRAPHS,
    light_path,
    logits_graph,
    relative_error,
    with_random_weights,
)


def measure(name: str, repeats: int, folder: Path) -> tuple[bool, float, dict[str, float]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shipped graphs output probabilities
        white_box = load_classifier(light_path(name)).differentiable
        model = with_random_weights(logits_graph(onnx.load(str(light_path(name)))), seed=0)
        path = folder / f"{name}.onnx"
        onnx.save(model, str(path))
        clf = load_classifier(path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # No spinning between runs: onnxruntime's idle threads would steal the cores from torch's.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ref = np.asarray(session.run(None, {feed: x.numpy()})[0]).reshape(1, -1)
    target = int(ref.argmax())
    error = relative_error(clf.logits(x), ref) if clf.differentiable else float("nan")

    def fwd_bwd() -> object:
        return clf.value_and_grad(x, lambda z: z[:, target] - z.mean(1))

    fns: dict[str, Callable[[], object]] = {
        "ort fwd": lambda: session.run(None, {feed: x.numpy()}),
        "aegis fwd": lambda: clf.logits(x),
    }
    if clf.differentiable:
        fns["aegis fwd+bwd"] = fwd_bwd
    return white_box, error, timed(fns, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--graphs", nargs="*", default=list(GRAPHS), choices=GRAPHS)
    args = ap.parse_args()
    print(
        f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads; one 1×3×224×224 input, median of "
        f"{args.repeats}"
    )
    header = "| graph | white-box | max rel. error | aegis fwd+bwd | aegis fwd | ort fwd | "
    print(header + "fwd+bwd ÷ ort fwd | fwd ÷ ort fwd |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.graphs:
            white_box, error, t = measure(name, args.repeats, Path(tmp))
            both = t.get("aegis fwd+bwd", float("nan"))
            ort_t = t["ort fwd"]
            print(
                f"| {name} | {'yes' if white_box else 'no'} | {error:.1e} | "
                f"{both * 1e3:.0f} ms | {t['aegis fwd'] * 1e3:.0f} ms | {ort_t * 1e3:.0f} ms | "
                f"{both / ort_t:.2f}× | {t['aegis fwd'] / ort_t:.2f}× |"
            )
            (Path(tmp) / f"{name}.onnx").unlink()


if __name__ == "__main__":
    main()
