"""Poisoning bench (run by hand): BadNets at 10% on the built-in MNIST train split (4,000
images) with mnist_cnn, aegis vs ART 1.20 on the same data and the same aegis-trained model.

    PYTHONPATH=src python bench/bench_poisoning.py --epochs 3

Prints clean accuracy of the clean and poisoned models, the backdoor success rate, and the
precision/recall and seconds of activation clustering (size, silhouette and exclusion
analyses) and spectral signatures (fixed ε = rate, fixed ε = target-class share, adaptive) in
aegis and in ART (``ActivationDefence``, ``SpectralSignatureDefense``), with ART's
``PoisoningAttackBackdoor`` checked to produce the same poisoned images. Every aegis detector's
kept points are retrained on (``train_classifier``, same recipe) and the cleaned model's clean
accuracy and backdoor success are printed; a detector that flags nothing keeps the poisoned
model (the same data and seed give the same weights).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from aegis.io.data import load_dataset
from aegis.metrics import backdoor_success_rate, flag_precision_recall
from aegis.model import Classifier
from aegis.poisoning import ActivationClustering, BadNets, SpectralSignatures, Trigger
from aegis.zoo.train import train_classifier


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    x, y = load_dataset("mnist", split="train").tensors()
    xt, yt = load_dataset("mnist", split="test").tensors()
    assert y is not None and yt is not None
    attack = BadNets(rate=args.rate, target=args.target, trigger=Trigger(size=3, pos="br"))
    t0 = time.perf_counter()
    p = attack.poison(x, y, seed=args.seed)
    t_poison = time.perf_counter() - t0

    def fit(xs: torch.Tensor, ys: torch.Tensor) -> tuple[Classifier, float]:
        t = time.perf_counter()
        clf = train_classifier(xs, ys, arch="mnist_cnn", epochs=args.epochs, seed=args.seed)
        return clf, time.perf_counter() - t

    clean, t_clean = fit(x, y)
    victim, t_victim = fit(p.x, p.y)
    acc_clean = float((clean.predict(xt) == yt).float().mean())
    acc_poison = float((victim.predict(xt) == yt).float().mean())
    trig = attack.apply_trigger(xt)
    bd_clean = backdoor_success_rate(clean.predict(trig).numpy(), yt.numpy(), args.target)
    bd_victim = backdoor_success_rate(victim.predict(trig).numpy(), yt.numpy(), args.target)
    print(f"training: clean {t_clean:.0f} s, poisoned {t_victim:.0f} s ({args.epochs} epochs)")
    print(f"clean accuracy: clean model {acc_clean:.4f}, poisoned model {acc_poison:.4f}")
    print(f"backdoor success: clean model {bd_clean['rate']:.4f}, poisoned {bd_victim['rate']:.4f}")

    mask = p.mask.numpy()
    share = int(mask.sum()) / int((p.y == args.target).sum())
    print(f"poison share of the target class: {share:.3f}")
    rows = []
    cleaned_rows = []
    dets: list[tuple[str, ActivationClustering | SpectralSignatures]] = [
        ("AC size (old default)", ActivationClustering(analysis="size")),
        ("AC silhouette", ActivationClustering(analysis="silhouette")),
        ("AC exclusion", ActivationClustering(analysis="exclusion", epochs=args.epochs)),
        ("spectral fixed eps=rate (old)", SpectralSignatures(eps=args.rate)),
        ("spectral fixed eps=share", SpectralSignatures(eps=share)),
        ("spectral adaptive eps=share", SpectralSignatures(eps=share, mode="adaptive")),
        ("spectral adaptive eps=0.5 (default)", SpectralSignatures(eps=0.5, mode="adaptive")),
    ]
    for label, det in dets:
        t = time.perf_counter()
        flags = det.detect(victim, p.x, p.y)
        secs = time.perf_counter() - t
        m = flag_precision_recall(flags.flagged, mask)
        rows.append(("aegis", label, m["precision"], m["recall"], secs))
        print(f"{label}: {m} {secs:.2f} s", flush=True)
        keep = torch.from_numpy(~flags.flagged)
        if not flags.flagged.any():
            cleaned_rows.append((label, acc_poison, bd_victim["rate"], int(keep.sum()), "="))
            continue
        cleaned, _ = fit(p.x[keep], p.y[keep])
        acc = float((cleaned.predict(xt) == yt).float().mean())
        bd = backdoor_success_rate(cleaned.predict(trig).numpy(), yt.numpy(), args.target)
        cleaned_rows.append((label, acc, bd["rate"], int(keep.sum()), ""))
        print(f"  cleaned: accuracy {acc:.4f}, backdoor {bd['rate']:.4f}", flush=True)

    # -- ART on the same data and model --------------------------------------------------------
    from art.attacks.poisoning import PoisoningAttackBackdoor
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    def square(xb: np.ndarray) -> np.ndarray:  # the same 3×3 white square, 1 px from br
        out = np.array(xb, copy=True)
        out[..., -4:-1, -4:-1] = 1.0
        return out

    idx = np.nonzero(mask)[0]
    t = time.perf_counter()
    art_x, _ = PoisoningAttackBackdoor(square).poison(
        x[idx].numpy(), y=np.eye(10)[np.full(idx.size, args.target)]
    )
    t_art_poison = time.perf_counter() - t
    same = bool(np.array_equal(art_x, p.x[idx].numpy()))
    print(f"ART PoisoningAttackBackdoor gives the same poisoned images: {same}")
    print(f"poisoning seconds: aegis {t_poison:.3f} (whole set), ART {t_art_poison:.3f}")

    module = victim.module
    module.eval()
    est = PyTorchClassifier(
        model=module,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    xs, ys = p.x.numpy(), np.eye(10)[p.y.numpy()]
    for name, make, kwargs in (
        (
            "activation-clustering",
            lambda: ActivationDefence(est, xs, ys),
            {"nb_clusters": 2, "nb_dims": 10, "reduce": "PCA"},
        ),
        (
            "spectral",
            lambda: SpectralSignatureDefense(
                est, xs, ys, batch_size=128, eps_multiplier=1.5, expected_pp_poison=args.rate
            ),
            {},
        ),
    ):
        t = time.perf_counter()
        try:
            _, is_clean = make().detect_poison(**kwargs)  # type: ignore[attr-defined]
        except Exception as exc:  # report ART failing, do not hide it
            print(f"ART {name} failed: {type(exc).__name__}: {exc}")
            continue
        secs = time.perf_counter() - t
        flagged = np.asarray(is_clean) == 0
        m = flag_precision_recall(flagged, mask)
        rows.append(("ART", name, m["precision"], m["recall"], secs))

    print(f"{'lib':6} {'detector':30} {'precision':>9} {'recall':>7} {'seconds':>8}")
    for lib, name, prec, rec, secs in rows:
        ps = "-" if prec is None else f"{prec:.3f}"
        print(f"{lib:6} {name:30} {ps:>9} {rec:7.3f} {secs:8.2f}")
    print(f"{'retrained on the kept points':36} {'kept':>5} {'clean acc':>9} {'backdoor':>8}")
    for name, acc, bd_rate, kept, same in cleaned_rows:
        bs = "-" if bd_rate is None else f"{bd_rate:.4f}"
        print(f"{name:36} {kept:5d} {acc:9.4f} {bs:>8} {same}")
    by = {(lib, n): s for lib, n, _, _, s in rows}
    for n, ours in (
        ("activation-clustering", "AC size (old default)"),
        ("spectral", "spectral fixed eps=rate (old)"),
    ):
        if ("ART", n) in by:
            print(f"{n}: ART seconds / aegis seconds = {by[('ART', n)] / by[('aegis', ours)]:.2f}")


if __name__ == "__main__":
    main()
