"""Metrics: pure functions over Records. Nothing else in aegis computes a metric."""

from __future__ import annotations

from typing import Any

import numpy as np

from aegis.errors import ConfigError, DataError
from aegis.records import NORM_FIELDS, Certificates, Records


def _share(num: int, den: int) -> float | None:
    return num / den if den else None


def clean_accuracy(rec: Records) -> float | None:
    return _share(int((rec.clean_pred == rec.y).sum()), len(rec))


def adversarial_accuracy(rec: Records) -> float | None:
    """Accuracy on what the attack returned (unattacked points keep their clean prediction)."""
    return _share(int((rec.adv_pred == rec.y).sum()), len(rec))


def success_rate(rec: Records) -> dict[str, Any]:
    """Attack success rate over the attacked points, with the counts that define it.

    Untargeted: the share of attacked (correctly classified) inputs whose prediction the attack
    flips. Targeted: the share of attacked eligible inputs that reach their target; inputs whose
    true label is the target are excluded and counted in ``excluded_target``.
    """
    correct = rec.clean_pred == rec.y
    attacked = int(rec.attacked.sum())
    return {
        "rate": _share(int(rec.success.sum()), attacked),
        "successes": int(rec.success.sum()),
        "attacked": attacked,
        "total": len(rec),
        "clean_correct": int(correct.sum()),
        "excluded_target": int((~rec.eligible).sum()),
        "skipped_misclassified": int((rec.eligible & ~correct & ~rec.attacked).sum()),
        "by_attack": np.bincount(rec.attack_index[rec.attack_index >= 0]).tolist(),
    }


def confusion_matrix(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def precision_recall_f1(y: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Per-class and macro precision, recall and F1 (a class never predicted has precision 0)."""
    cm = confusion_matrix(y, pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    actual = cm.sum(1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = actual > 0  # macro averages over the classes present in the data
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": actual.astype(np.int64).tolist(),
        "macro_precision": float(precision[present].mean()) if present.any() else None,
        "macro_recall": float(recall[present].mean()) if present.any() else None,
        "macro_f1": float(f1[present].mean()) if present.any() else None,
    }


def backdoor_success_rate(pred: np.ndarray, y: np.ndarray, target: int) -> dict[str, Any]:
    """Backdoor attack success rate: the share of triggered inputs predicted as ``target``,
    over the inputs whose true class is not ``target`` (those are excluded and counted)."""
    p, t = np.asarray(pred).ravel(), np.asarray(y).ravel()
    eligible = t != target
    hits = int((p[eligible] == target).sum())
    return {
        "rate": _share(hits, int(eligible.sum())),
        "successes": hits,
        "eligible": int(eligible.sum()),
        "excluded_target": int((~eligible).sum()),
    }


def flag_precision_recall(flagged: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Precision, recall and F1 of flagged points against a ground-truth mask (e.g. poisoned
    training points); precision is None when nothing is flagged, recall when nothing is true."""
    f, t = np.asarray(flagged, bool).ravel(), np.asarray(truth, bool).ravel()
    if f.shape != t.shape:
        raise DataError(f"flags have {f.size} entries, the ground truth {t.size}")
    tp = int((f & t).sum())
    precision = _share(tp, int(f.sum()))
    recall = _share(tp, int(t.sum()))
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else (0.0 if precision is not None and recall is not None else None)
    )
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "flagged": int(f.sum()),
        "true_positives": tp,
        "positives": int(t.sum()),
        "n": int(f.size),
    }


MAX_CONFUSION_CLASSES = 100
"""Confusion matrices are stored for at most this many classes (10 000 counts each)."""


def confusion_matrices(rec: Records, num_classes: int) -> dict[str, Any] | None:
    """Clean and under-attack confusion matrices (rows: true class, columns: prediction), or
    None beyond ``MAX_CONFUSION_CLASSES`` classes (the matrices would dwarf the results)."""
    if num_classes > MAX_CONFUSION_CLASSES:
        return None
    return {
        "clean": confusion_matrix(rec.y, rec.clean_pred, num_classes).tolist(),
        "adversarial": confusion_matrix(rec.y, rec.adv_pred, num_classes).tolist(),
    }


def norm_stats(rec: Records) -> dict[str, dict[str, float | None]]:
    """Mean / median / max of each perturbation norm over the successful adversarial examples."""
    out: dict[str, dict[str, float | None]] = {}
    ok = rec.success
    for name in NORM_FIELDS:
        values = getattr(rec, name)[ok]
        out[name] = {
            "mean": float(values.mean()) if values.size else None,
            "median": float(np.median(values)) if values.size else None,
            "max": float(values.max()) if values.size else None,
        }
    return out


def call_stats(rec: Records) -> dict[str, float | int | None]:
    att = rec.attacked
    return {
        "forward_total": int(rec.forward_calls.sum()),
        "gradient_total": int(rec.gradient_calls.sum()),
        "gradient_mean_per_attacked": float(rec.gradient_calls[att].mean()) if att.any() else None,
        "forward_mean_per_attacked": float(rec.forward_calls[att].mean()) if att.any() else None,
        "forward_median_per_attacked": (
            float(np.median(rec.forward_calls[att])) if att.any() else None
        ),
        "seconds": float(rec.seconds.sum()),
    }


def accuracy_at(rec: Records, norm: str, eps: float) -> float | None:
    """Accuracy under attack had the budget been ``eps`` (from a minimal-norm run's records):
    a point counts as correct if it was classified correctly and the attack's smallest
    adversarial perturbation is larger than ``eps`` (or none was found)."""
    broken = rec.success & (getattr(rec, norm) <= eps)
    return _share(int(((rec.clean_pred == rec.y) & ~broken).sum()), len(rec))


def success_at(rec: Records, norm: str, eps: float) -> float | None:
    """Success rate over the attacked points had the budget been ``eps``."""
    broken = rec.success & (getattr(rec, norm) <= eps)
    return _share(int(broken.sum()), int(rec.attacked.sum()))


def minimal_norms(rec: Records, norm: str, grid: list[float] | None = None) -> dict[str, Any]:
    """The distribution of the smallest adversarial perturbations a minimal-norm attack found,
    and the accuracy-vs-ε curve it implies (on ``grid``, or 21 points from 0 to the largest)."""
    found = getattr(rec, norm)[rec.success]
    q = [10, 25, 50, 75, 90]
    values = np.percentile(found, q).tolist() if found.size else [None] * len(q)
    if grid is None:
        top = float(found.max()) if found.size else 0.0
        grid = np.linspace(0.0, top, 21).tolist() if top > 0 else [0.0]
    grid = sorted(float(e) for e in grid if np.isfinite(e))
    return {
        "norm": norm,
        "found": int(found.size),
        "attacked": int(rec.attacked.sum()),
        "median": float(np.median(found)) if found.size else None,
        "mean": float(found.mean()) if found.size else None,
        "percentiles": dict(zip([f"p{v}" for v in q], values, strict=True)),
        "curve": [
            {"eps": e, "accuracy": accuracy_at(rec, norm, e), "success": success_at(rec, norm, e)}
            for e in grid
        ],
    }


def verdict(
    rec: Records,
    threshold: float | None,
    flags: list[str] | None = None,
    *,
    labeled: bool = True,
) -> dict[str, Any]:
    """Does the attack reach the required success rate? Never a robustness certificate.

    ``flags`` names the sanity checks that fired: the text then opens with SUSPICIOUS, because
    the warning signs of gradient masking make any accuracy under attack unreliable.
    """
    sr = success_rate(rec)
    rate = sr["rate"]
    goal = (
        "reach their target class"
        if rec.targeted
        else ("be misclassified" if labeled else "change the model's prediction")
    )
    warn = (
        f"SUSPICIOUS evaluation (sanity checks: {', '.join(flags)}); treat the numbers as "
        "unreliable until an adaptive attack confirms them. "
        if flags
        else ""
    )
    if rate is None:
        text = warn + "no input was eligible for the attack: nothing to judge"
        return {
            "reached": None,
            "threshold": threshold,
            "rate": None,
            "text": text,
            "suspicious": bool(flags),
        }
    share = f"{rate:.1%} of {sr['attacked']} attacked inputs were made to {goal}"
    if threshold is None:
        reached = None
        text = f"{share} (no --success-threshold given)"
    else:
        reached = rate >= threshold
        word = "SUCCEEDS" if reached else "FAILS"
        text = f"attack {word}: {share}; required {threshold:.1%}"
    if not labeled:
        text += "; the data has no labels: the model's clean predictions stood in for them"
    elif not rec.targeted:
        acc = adversarial_accuracy(rec)
        text += (
            f"; accuracy under attack {acc:.1%} is an upper bound on robust accuracy, "
            "not a guarantee (a stronger attack can only lower it)"
        )
    return {
        "reached": reached,
        "threshold": threshold,
        "rate": rate,
        "text": warn + text,
        "suspicious": bool(flags),
    }


def summarize(
    rec: Records,
    num_classes: int,
    threshold: float | None = None,
    flags: list[str] | None = None,
    *,
    labeled: bool = True,
) -> dict[str, Any]:
    """Every metric of an evaluation, as stored in ``results.json``.

    ``labeled=False``: the data had no labels and ``rec.y`` holds the model's own clean
    predictions. Accuracy, precision, recall and F1 then say nothing and are None (with
    ``labels`` saying why); the success rate is the figure: reaching the target, or (untargeted)
    changing the prediction."""
    out: dict[str, Any] = {
        "n": len(rec),
        "clean_accuracy": clean_accuracy(rec),
        "adversarial_accuracy": adversarial_accuracy(rec),
        "success": success_rate(rec),
        "clean": precision_recall_f1(rec.y, rec.clean_pred, num_classes),
        "adversarial": precision_recall_f1(rec.y, rec.adv_pred, num_classes),
        "norms": norm_stats(rec),
        "calls": call_stats(rec),
        "verdict": verdict(rec, threshold, flags, labeled=labeled),
    }
    if not labeled:
        out["labels"] = NO_LABELS
        out["clean_accuracy"] = out["adversarial_accuracy"] = None
        if not rec.targeted:
            out["predictions_kept"] = adversarial_accuracy(rec)
        for part in ("clean", "adversarial"):
            out[part] = {key: None for key in out[part]}
    return out


NO_LABELS = (
    "n/a: no labels (the model's own clean predictions stood in; accuracy, precision, recall "
    "and F1 need true labels)"
)


# -- certification ------------------------------------------------------------------------


def certified_accuracy(cert: Certificates, radius: float) -> float | None:
    """The share of samples the smoothed classifier gets right with a certified L2 radius of at
    least ``radius`` (Cohen et al. 2019); an abstain is never correct."""
    return _share(int((cert.correct & (cert.radius >= radius)).sum()), len(cert))


def certification_summary(cert: Certificates, radii: list[float]) -> dict[str, Any]:
    """Certified accuracy at each radius, the abstain rate and the radius distribution."""
    ok = cert.correct
    return {
        "n": len(cert),
        "certified_accuracy": [
            {"radius": float(r), "accuracy": certified_accuracy(cert, float(r))}
            for r in sorted(radii)
        ],
        "accuracy": _share(int(ok.sum()), len(cert)),
        "abstain_rate": _share(int(cert.abstained.sum()), len(cert)),
        "median_radius_correct": float(np.median(cert.radius[ok])) if ok.any() else None,
        "seconds": float(cert.seconds.sum()),
    }


# -- detection ----------------------------------------------------------------------------


def roc_auc(clean_scores: np.ndarray, adv_scores: np.ndarray) -> float | None:
    """Detection ROC-AUC: the probability that an adversarial input scores higher than a clean
    one, ties counting one half (the Mann–Whitney statistic; equals sklearn's roc_auc_score
    with adversarial as the positive class)."""
    neg = np.asarray(clean_scores, np.float64).ravel()
    pos = np.asarray(adv_scores, np.float64).ravel()
    if not neg.size or not pos.size:
        return None
    both = np.concatenate([neg, pos])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size, np.float64)
    sorted_vals = both[order]
    # average ranks of tied values
    _, first, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def threshold_at_fpr(clean_scores: np.ndarray, fpr: float = 0.05) -> float:
    """The smallest threshold that flags (score > threshold) at most ``fpr`` of these clean
    scores: the (⌊fpr·n⌋+1)-th largest clean score (−inf when every score may be flagged)."""
    if not 0 <= fpr <= 1:
        raise ConfigError(f"fpr must be in [0, 1], got {fpr}")
    s = np.sort(np.asarray(clean_scores, np.float64).ravel())[::-1]
    if not s.size:
        raise DataError("threshold_at_fpr needs at least one clean score")
    if not np.isfinite(s).all():
        raise DataError("clean scores contain NaN or inf")
    k = int(np.floor(fpr * s.size + 1e-9))
    return float(s[k]) if k < s.size else float("-inf")


def detection_rate(scores: np.ndarray, threshold: float) -> float | None:
    """The share of ``scores`` above ``threshold`` (flagged as adversarial)."""
    s = np.asarray(scores, np.float64).ravel()
    return _share(int((s > threshold).sum()), s.size)


def tpr_at_fpr(
    clean_scores: np.ndarray, adv_scores: np.ndarray, fpr: float = 0.05
) -> dict[str, Any]:
    """True-positive rate on adversarial scores at the threshold chosen on the clean scores
    for false-positive rate ``fpr``; reports the threshold and the FPR it really gives."""
    t = threshold_at_fpr(clean_scores, fpr)
    return {
        "fpr_target": fpr,
        "threshold": t,
        "fpr": detection_rate(clean_scores, t),
        "tpr": detection_rate(adv_scores, t),
        "n_clean": int(np.asarray(clean_scores).size),
        "n_adversarial": int(np.asarray(adv_scores).size),
    }


def handled(rec: Records, adv_detected: np.ndarray) -> np.ndarray:
    """Per point: the submitted input (``x_adv``) is flagged or classified correctly."""
    return np.asarray((rec.adv_pred == rec.y) | np.asarray(adv_detected, bool))


def worst_case_accuracy(handled_by_attack: list[np.ndarray]) -> float | None:
    """Combined-system robust accuracy under the per-sample worst case of several attacks:
    a point counts only if every attack's input for it was handled."""
    if not handled_by_attack:
        return None
    ok = np.logical_and.reduce([np.asarray(h, bool) for h in handled_by_attack])
    return _share(int(ok.sum()), int(ok.size))


def combined_accuracy(
    rec: Records, clean_detected: np.ndarray, adv_detected: np.ndarray
) -> dict[str, float | None]:
    """Accuracy of classifier + detector as one system.

    Clean: a point is right only if it is classified correctly AND not flagged (a false alarm
    on a clean input is an error). Under attack: the input the attacker submits (``x_adv``, or
    the clean input for points that were not attacked) is handled if it is flagged OR
    classified correctly.
    """
    clean_ok = (rec.clean_pred == rec.y) & ~np.asarray(clean_detected, bool)
    adv_ok = handled(rec, adv_detected)
    return {
        "clean_accuracy": _share(int(clean_ok.sum()), len(rec)),
        "robust_accuracy": _share(int(adv_ok.sum()), len(rec)),
        "classifier_clean_accuracy": clean_accuracy(rec),
        "classifier_robust_accuracy": adversarial_accuracy(rec),
    }
