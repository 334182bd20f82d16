"""Leakage: aegis' extraction and membership attacks next to ART's, same victim, data and budget.

Extraction. The victim is ``mnist_cnn`` trained with ``train_classifier`` on the first
``--victim-n`` images of the built-in MNIST train split; the attacker's pool is the rest of that
split (held-out data of the same task, labels unused) and, for one budget, the 8×8 digits
upsampled to 28×28 (another distribution). At each budget:

  aegis copycat (labels) · aegis knockoff (scores) · aegis knockoff (scores rounded to 1 decimal)
  ART CopycatCNN (labels) · ART KnockoffNets (random sampling, probabilities)

ART's thieved model is a fresh ``mnist_cnn`` in a ``PyTorchClassifier`` (Adam at a constant
1e-3, cross-entropy, batch 64) trained for the same number of epochs as aegis' substitute at
that budget; ART queries a PyTorchClassifier around the victim (with a softmax for
KnockoffNets), whose calls are counted. Every substitute is scored the same way: accuracy and
fidelity on the 1,000 MNIST test images, and the transfer of PGD-40 L∞ ε = 0.3 crafted on it
(aegis' PGD, random start, step 0.01) to the victim on the first 200 test images.

Membership. Candidates are the first ``--mia-n`` train images; a seeded half are members. Per
training recipe a target ``mnist_cnn`` is trained on the members; aegis runs the loss-threshold
attack and LiRA (``--shadows`` shadow models on random halves of the candidates, online and
offline). ART's ``MembershipInferenceBlackBox`` (random forest on the target's probabilities
and the labels) is fitted on the first half of the members and non-members and scored on the
second half, with ``MembershipInferenceBlackBoxRuleBased`` (member iff correctly classified);
aegis' attacks are scored on that same second half (and on all candidates).

Run by hand (one thread):

    PYTHONPATH=src .venv/bin/python bench/bench_leakage.py [--out /tmp/bench_leakage]

Each finished row is appended as one JSON line to ``<out>/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aegis.io.data import load_dataset
from aegis.leakage.extraction import (
    OutputPolicy,
    SubstituteRecipe,
    extract,
    fidelity,
    fit_pool,
    transfer_attack,
)
from aegis.leakage.membership import TargetRecipe, attack_target, membership_metrics
from aegis.model import Classifier, ModelInfo
from aegis.zoo.architectures import mnist_cnn
from aegis.zoo.train import train_classifier

INFO = ModelInfo(num_classes=10, input_shape=(1, 28, 28))


class Counting(nn.Module):
    """The victim as ART sees it: every input row counted (optionally softmax outputs)."""

    def __init__(self, inner: nn.Module, softmax: bool) -> None:
        super().__init__()
        self.inner = inner
        self.softmax = softmax
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += int(x.shape[0])
        z = self.inner(x)
        return torch.softmax(z, 1) if self.softmax else z


def _art(module: nn.Module, lr: float = 1e-3) -> Any:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=module,
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(module.parameters(), lr=lr),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )


def _score(
    sub: Classifier,
    victim: Classifier,
    xt: Tensor,
    yt: Tensor,
    vpred: Tensor,
    transfer_n: int,
) -> dict[str, Any]:
    t = transfer_attack(sub, victim, xt[:transfer_n], yt[:transfer_n], steps=40)
    return {
        "accuracy": float((sub.predict(xt) == yt).float().mean()),
        "fidelity": fidelity(sub, vpred, xt),
        "transfer": t["success_rate"],
    }


def bench_extraction(args: argparse.Namespace, emit: Any) -> None:
    x, y = load_dataset("mnist", split="train").tensors()
    xt, yt = load_dataset("mnist", split="test").tensors()
    assert y is not None and yt is not None
    start = time.perf_counter()
    victim = train_classifier(
        x[: args.victim_n], y[: args.victim_n], arch="mnist_cnn", epochs=10, seed=0
    )
    vpred = victim.predict(xt)
    emit(
        {
            "experiment": "victim",
            "n": args.victim_n,
            "accuracy": float((vpred == yt).float().mean()),
            "seconds": time.perf_counter() - start,
        }
    )
    pool = x[args.victim_n :]
    digits, _ = load_dataset("digits", split="train").tensors()
    digits_pool, _ = fit_pool(digits, (1, 28, 28))
    recipe = SubstituteRecipe(arch="mnist_cnn", epochs=args.sub_epochs)
    module = victim.module
    assert isinstance(module, nn.Module)
    for budget in args.budgets:
        for out in ("labels", "scores", "round:1"):
            t0 = time.perf_counter()
            sub, info = extract(
                victim, pool, budget=budget, output=OutputPolicy.parse(out), recipe=recipe
            )
            row = {
                "experiment": "extraction",
                "tool": "aegis",
                "method": info["method"],
                "output": out,
                "pool": "mnist held-out",
                "budget": budget,
                "queries": info["queries"],
                "epochs": info["epochs"],
                **_score(sub, victim, xt, yt, vpred, args.transfer_n),
                "seconds": time.perf_counter() - t0,
            }
            emit(row)
        epochs = recipe.epochs_for(budget)
        for name in ("CopycatCNN", "KnockoffNets"):
            from art.attacks.extraction import CopycatCNN, KnockoffNets

            np.random.seed(0)
            torch.manual_seed(0)
            counted = Counting(module, softmax=name == "KnockoffNets")
            thief_module = mnist_cnn()
            common = {
                "batch_size_fit": 64,
                "batch_size_query": 256,
                "nb_epochs": epochs,
                "nb_stolen": budget,
            }
            t0 = time.perf_counter()
            if name == "CopycatCNN":
                attack = CopycatCNN(classifier=_art(counted), use_probability=False, **common)
            else:
                attack = KnockoffNets(
                    classifier=_art(counted),
                    sampling_strategy="random",
                    use_probability=True,
                    **common,
                )
            attack.extract(pool.numpy(), thieved_classifier=_art(thief_module))
            seconds = time.perf_counter() - t0
            thief_module.eval()
            sub = Classifier(thief_module, INFO, name=f"art-{name}")
            emit(
                {
                    "experiment": "extraction",
                    "tool": "art",
                    "method": name,
                    "output": "labels" if name == "CopycatCNN" else "scores",
                    "pool": "mnist held-out",
                    "budget": budget,
                    "queries": counted.rows,
                    "epochs": epochs,
                    **_score(sub, victim, xt, yt, vpred, args.transfer_n),
                    "seconds": seconds,
                }
            )
    for out in ("labels", "scores"):
        t0 = time.perf_counter()
        sub, info = extract(
            victim, digits_pool, budget=args.digits_budget, output=OutputPolicy.parse(out),
            recipe=recipe,
        )  # fmt: skip
        emit(
            {
                "experiment": "extraction",
                "tool": "aegis",
                "method": info["method"],
                "output": out,
                "pool": "digits 8x8 upsampled",
                "budget": args.digits_budget,
                "queries": info["queries"],
                "epochs": info["epochs"],
                **_score(sub, victim, xt, yt, vpred, args.transfer_n),
                "seconds": time.perf_counter() - t0,
            }
        )


def bench_membership(args: argparse.Namespace, emit: Any) -> None:
    from art.attacks.inference.membership_inference import (
        MembershipInferenceBlackBox,
        MembershipInferenceBlackBoxRuleBased,
    )

    from aegis.leakage.membership import split_members

    x, y = load_dataset("mnist", split="train").subset(args.mia_n).tensors()
    assert y is not None
    n = int(x.shape[0])
    members = split_members(n, 0.5, 0)
    mi, ni = np.flatnonzero(members), np.flatnonzero(~members)
    # ART's attack model learns on the first half of each group, everyone is scored on the rest
    fit_m, ev_m = mi[: len(mi) // 2], mi[len(mi) // 2 :]
    fit_n, ev_n = ni[: len(ni) // 2], ni[len(ni) // 2 :]
    base = TargetRecipe(arch="mnist_cnn", epochs=args.mia_epochs)
    for text in args.variants:
        recipe = base.variant(text)
        t0 = time.perf_counter()
        target = recipe.train(x[mi], y[mi], num_classes=10, seed=0)
        scores = attack_target(target, x, y, recipe, shadows=args.shadows, seed=0)
        seconds = time.perf_counter() - t0
        pred = target.predict(x)
        row: dict[str, Any] = {
            "experiment": "membership",
            "variant": recipe.name,
            "train_accuracy": float((pred[mi] == y[mi]).float().mean()),
            "test_accuracy": float((pred[ni] == y[ni]).float().mean()),
            "aegis_seconds": seconds,
            "attacks": {},
        }
        for name, s in scores.items():
            row["attacks"][name] = {
                "all": membership_metrics(s[members], s[~members]),
                "eval_half": membership_metrics(s[ev_m], s[ev_n]),
            }
        module = target.module
        assert isinstance(module, nn.Module)
        np.random.seed(0)
        wrapped = _art(Counting(module, softmax=False))
        xn, yn = x.numpy(), y.numpy()
        t0 = time.perf_counter()
        bb = MembershipInferenceBlackBox(wrapped, attack_model_type="rf")
        bb.fit(xn[fit_m], yn[fit_m], xn[fit_n], yn[fit_n])
        p_m = bb.infer(xn[ev_m], yn[ev_m], probabilities=True)
        p_n = bb.infer(xn[ev_n], yn[ev_n], probabilities=True)
        col = 1 if p_m.ndim == 2 and p_m.shape[1] == 2 else 0
        s_m = p_m[:, col] if p_m.ndim == 2 else p_m
        s_n = p_n[:, col] if p_n.ndim == 2 else p_n
        row["attacks"]["art-blackbox-rf"] = {"eval_half": membership_metrics(s_m, s_n)}
        row["art_seconds"] = time.perf_counter() - t0
        rb = MembershipInferenceBlackBoxRuleBased(wrapped)
        r_m = rb.infer(xn[ev_m], yn[ev_m]).astype(np.float64).ravel()
        r_n = rb.infer(xn[ev_n], yn[ev_n]).astype(np.float64).ravel()
        row["attacks"]["art-rule-based"] = {"eval_half": membership_metrics(r_m, r_n)}
        emit(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_leakage"))
    parser.add_argument("--only", choices=("extraction", "membership"), default=None)
    parser.add_argument("--victim-n", type=int, default=2000)
    parser.add_argument("--budgets", type=lambda s: [int(v) for v in s.split(",")],
                        default=[250, 1000, 2000])  # fmt: skip
    parser.add_argument("--digits-budget", type=int, default=1000)
    parser.add_argument("--sub-epochs", type=int, default=10)
    parser.add_argument("--transfer-n", type=int, default=200)
    parser.add_argument("--mia-n", type=int, default=1000)
    parser.add_argument("--mia-epochs", type=int, default=30)
    parser.add_argument("--shadows", type=int, default=4)
    parser.add_argument("--variants", type=lambda s: s.split(","),
                        default=["base", "wd=5e-3", "epochs=5", "shift=2"])  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    sink = args.out / "results.jsonl"

    def emit(row: dict[str, Any]) -> None:
        with sink.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    if args.only in (None, "extraction"):
        bench_extraction(args, emit)
    if args.only in (None, "membership"):
        bench_membership(args, emit)


if __name__ == "__main__":
    main()
