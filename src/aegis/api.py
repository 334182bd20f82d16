"""The one Python call behind ``aegis attack``: load, attack, measure, write the run directory."""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aegis import sanity
from aegis.attacks.base import Attack
from aegis.defenses.preprocessing import DefendedClassifier, Preprocessor, defend, parse_preprocess
from aegis.engine import Evaluation, ProgressFn, evaluate
from aegis.errors import ConfigError, DataError
from aegis.executors import Executor, create_executor
from aegis.io import rundir
from aegis.io.data import Dataset, load_dataset
from aegis.metrics import (
    adversarial_accuracy,
    clean_accuracy,
    confusion_matrices,
    minimal_norms,
    summarize,
)
from aegis.model import Classifier
from aegis.records import Records
from aegis.registry import create_all
from aegis.threat import ThreatModel

log = logging.getLogger(__name__)

DEFAULT_EPS = 0.3
"""The budget when none is given to a bounded attack (MNIST's customary L∞ budget)."""

PROBE = 64
"""Clean inputs the model-probing sanity checks look at."""


@dataclass
class AttackRun:
    """The outcome of ``run_attack``: the evaluation, its metrics, and where it was written."""

    evaluation: Evaluation
    metrics: dict[str, Any]
    results: dict[str, Any]
    out_dir: Path | None

    @property
    def verdict(self) -> str:
        return str(self.metrics["verdict"]["text"])

    @property
    def reached_threshold(self) -> bool | None:
        reached = self.metrics["verdict"]["reached"]
        return None if reached is None else bool(reached)


def _as_dataset(
    data: Dataset | str | Path | tuple[np.ndarray, np.ndarray],
    labels: str | Path | None,
    data_options: dict[str, Any],
) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, tuple):
        x, y = data
        return Dataset(
            x=np.asarray(x, np.float32),
            y=np.asarray(y, np.int64),
            name="arrays",
            num_classes=None,
            provenance={"source": "in-memory arrays"},
        )
    return load_dataset(str(data), labels=None if labels is None else str(labels), **data_options)


def _as_classifier(
    model: Classifier | str | Path, dataset: Dataset, model_options: dict[str, Any]
) -> Classifier:
    if isinstance(model, Classifier):
        return model
    from aegis.io.models import load_classifier

    options = dict(model_options)
    options.setdefault("input_shape_hint", tuple(dataset.x.shape[1:]))
    return load_classifier(str(model), **options)


def load_inputs(
    model: Classifier | str | Path,
    data: Dataset | str | Path | tuple[np.ndarray, np.ndarray],
    labels: str | Path | None,
    limit: int | None,
    data_options: dict[str, Any] | None,
    model_options: dict[str, Any] | None,
) -> tuple[Classifier, Dataset, np.ndarray]:
    """The dataset (its first ``limit`` inputs), the model loaded for it, and the labels
    checked against the model's outputs."""
    dataset = _as_dataset(data, labels, dict(data_options or {}))
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"limit must be >= 1, got {limit}")
        dataset = dataset.subset(limit)
    clf = _as_classifier(model, dataset, dict(model_options or {}))
    return clf, dataset, check_compatible(clf, dataset)


def check_compatible(model: Classifier, dataset: Dataset) -> np.ndarray:
    """Data and model must agree on the input shape, and the data needs labels; returns them.

    Label ranges and the input box are checked by ``engine.evaluate`` for every caller."""
    shape = tuple(dataset.x.shape[1:])
    if shape != model.input_shape:
        what = "channels" if shape[1:] == model.input_shape[1:] else "shape (C, H, W)"
        raise DataError(
            f"the data has {what} {shape if what != 'channels' else shape[0]} but the model "
            f"expects {model.input_shape if what != 'channels' else model.input_shape[0]}; "
            "convert the data or pass --input-shape/--layout"
        )
    y = dataset.y
    if y is None:
        raise DataError("the data has no labels; pass --labels FILE.npy")
    return y


def _budgets(eps: float | str | Sequence[float] | None, minimal: bool) -> list[float]:
    """The budgets to evaluate, ascending; a minimal-norm attack defaults to unbounded."""
    if eps is None:
        return [math.inf] if minimal else [DEFAULT_EPS]
    values = [float(eps)] if isinstance(eps, (int, float, str)) else [float(e) for e in eps]
    bad = [e for e in values if not e >= 0]  # also NaN
    if not values or bad:
        raise ConfigError(f"eps must be >= 0, got {bad[0] if bad else eps!r}")
    return sorted(set(values))


def run_attack(
    model: Classifier | str | Path,
    data: Dataset | str | Path | tuple[np.ndarray, np.ndarray],
    *,
    labels: str | Path | None = None,
    attack: str | list[str] = "pgd",
    norm: str = "linf",
    eps: float | Sequence[float] | None = None,
    targets: int | np.ndarray | None = None,
    success_threshold: float | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    attack_misclassified: bool = False,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    model_options: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
    on_loaded: Callable[[Classifier, Dataset], None] | None = None,
    preprocess: Sequence[str | Preprocessor] | None = None,
    adaptive: bool = True,
    eot_samples: int | None = None,
    compare_naive: bool = False,
    resume: bool = False,
    executor: str | Executor = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    **attack_params: Any,
) -> AttackRun:
    """Attack a model on a dataset and measure it; write a run directory if ``out`` is given.

    ``model`` is a Classifier or a model file; ``data`` a Dataset, a file / folder / built-in
    name, or ``(x, y)`` arrays (NCHW floats). ``attack_params`` are the attack's
    hyper-parameters (``steps``, ``step_size``, ``restarts``, ...). ``attack`` may name an
    ensemble (``"apgd-ce,apgd-t"``, a list, or a suite such as ``"standard"``): each member
    runs only on the points the earlier ones failed on, and each point keeps its first success.

    ``eps`` is one budget or several (a sweep: one evaluation per budget, the largest is the
    headline). A minimal-norm attack (``fmn``, ``ddn``, ``cw``, ...) runs once, unbounded, and
    every budget's numbers follow from each point's smallest perturbation; without ``eps`` it
    reports the median minimal norm and the accuracy-vs-ε curve. ``progress`` is called with
    (samples done, samples in all). Sanity checks run after the evaluation and are stored in
    ``results["sanity"]``; any warning sign turns the verdict SUSPICIOUS.

    ``preprocess`` puts preprocessing defenses (``"jpeg:quality=75"``, ``"bit-depth:bits=4"``,
    ...; applied in order) in front of the model, attacked adaptively by default: BPDA through
    non-differentiable steps, EOT over ``eot_samples`` draws (default 10) for random ones.
    ``adaptive=False`` attacks them naively (misleading). ``compare_naive`` also runs the
    naive evaluation and stores its numbers beside the adaptive ones, in
    ``results["defense"]["naive"]``; the headline stays the adaptive one.

    With ``out``, every finished batch of every evaluation is written atomically under
    ``out/progress/``; ``resume=True`` reads back the batches a killed run finished (same
    model, data and settings) and attacks only the rest, giving the records of an
    uninterrupted run. The folder is removed once the run's results are written; without
    ``resume`` a leftover one is discarded and the run starts over.

    ``executor="ray"`` shards the batches over Ray workers (``workers`` of them, default one
    per GPU, else one per CPU; a local Ray instance, or the cluster at ``ray_address``) with
    the records of the local run; ``results["config"]["executor"]`` says which ran. An
    :class:`~aegis.executors.Executor` instance may be passed instead of a name.
    """
    if success_threshold is not None and not 0 <= success_threshold <= 1:
        raise ConfigError(
            f"success threshold must be a share in [0, 1], got {success_threshold} "
            "(write 0.9 for 90%)"
        )
    steps = [parse_preprocess(p) for p in preprocess or []]
    defended = bool(steps) or isinstance(model, DefendedClassifier)
    if not defended and (compare_naive or not adaptive or eot_samples is not None):
        raise ConfigError(
            "--naive, --no-adaptive and --eot-samples change how preprocessing defenses are "
            "attacked; name them with --preprocess (e.g. --preprocess jpeg:quality=75)"
        )
    if isinstance(executor, Executor):
        if workers is not None or ray_address is not None:
            raise ConfigError("workers and ray_address go with executor='ray', not an instance")
        runner = executor
    else:
        runner = create_executor(executor, workers=workers, address=ray_address)
    algo = create_all(attack, norm=norm, **attack_params)
    minimal = all(a.minimal for a in algo)
    budgets = _budgets(eps, minimal)
    ThreatModel(norm, budgets[0])  # validates the norm before anything is loaded
    clf, dataset, y = load_inputs(model, data, labels, limit, data_options, model_options)
    if steps:
        clf = defend(clf, steps, adaptive=adaptive, eot_samples=eot_samples, seed=seed)
    if on_loaded is not None:
        on_loaded(clf, dataset)
    n = len(dataset.x)
    runs = [math.inf] if minimal else budgets
    passes = 2 if compare_naive else 1
    naive_clf = None
    if compare_naive:
        if not isinstance(clf, DefendedClassifier):
            raise ConfigError("compare_naive needs a model behind preprocessing defenses")
        naive_clf = clf.with_adaptive(False)

    progress_dir = None if out is None else Path(out) / "progress"
    if progress_dir is not None and progress_dir.is_dir() and not resume:
        shutil.rmtree(progress_dir)

    def evaluate_all(target: Classifier, first: int) -> list[Evaluation]:
        """Every run (one per budget, or the one unbounded run) of one classifier."""
        return [
            evaluate(
                target,
                dataset.x,
                y,
                algo,
                ThreatModel(norm, e, targeted=targets is not None),
                targets=targets,
                batch_size=batch_size,
                seed=seed,
                attack_misclassified=attack_misclassified,
                progress=_shifted(progress, (first + number) * n, n * len(runs) * passes),
                checkpoint=None
                if progress_dir is None
                else progress_dir / f"evaluation-{first + number}",
                executor=runner,
            )
            for number, e in enumerate(runs)
        ]

    def by_budget(done: list[Evaluation]) -> list[tuple[float, Records]]:
        if minimal:
            unbounded = done[0].records
            return [(e, unbounded if math.isinf(e) else unbounded.within(norm, e)) for e in budgets]
        return [(e, ev.records) for e, ev in zip(budgets, done, strict=True)]

    evals = evaluate_all(clf, 0)
    per_budget = by_budget(evals)
    unbounded = evals[0]
    head_eps, head = per_budget[-1]
    x_adv = evals[-1].x_adv
    found = None
    if minimal:
        lost = unbounded.records.success & ~head.success
        x_adv = np.where(lost[:, None, None, None], dataset.x, x_adv)
        r = unbounded.records
        found = getattr(r, norm)[r.success]

    flags = _sanity(clf, dataset, y, evals, algo, per_budget, norm, minimal)
    names = sanity.raised(flags)
    metrics = summarize(head, clf.num_classes, success_threshold, names)
    metrics["confusion"] = confusion_matrices(head, clf.num_classes)
    defense = None
    if isinstance(clf, DefendedClassifier):
        defense = clf.describe_defense()
        if naive_clf is not None:
            naive_evals = evaluate_all(naive_clf, len(runs))
            defense["naive"] = _naive_summary(
                naive_clf, dataset, y, by_budget(naive_evals), head, success_threshold
            )
            defense["naive"]["seconds"] = sum(ev.seconds for ev in naive_evals)
    config = dict(evals[-1].config)
    config["threat"] = ThreatModel(norm, head_eps, targets is not None).to_dict()
    config["minimal_norm"] = minimal
    results: dict[str, Any] = {
        **rundir.header(seed),
        "model": clf.describe(),
        "data": dataset.to_dict(),
        "config": {**config, "success_threshold": success_threshold},
        "metrics": metrics,
        "sanity": [f.to_dict() for f in flags],
        "seconds": sum(ev.seconds for ev in evals),
        **({} if defense is None else {"defense": defense}),
        "records": head.to_dict(),
        "gallery": _gallery(clf, dataset.x, x_adv, head),
        "files": {},
    }
    if minimal:
        finite = [e for e in budgets if not math.isinf(e)]
        results["minimal"] = minimal_norms(unbounded.records, norm, finite or None)
    if len(budgets) > 1:
        results["sweep"] = [
            {
                "eps": e,
                "metrics": summarize(rec, clf.num_classes, success_threshold, names),
                **({} if minimal else {"records": rec.to_dict()}),
            }
            for e, rec in per_budget
        ]
    out_dir = None
    if out is not None:
        out_dir = _write_run(
            Path(out), results, dataset, head, x_adv, attack, norm, head_eps, targets, found
        )
        if progress_dir is not None and progress_dir.is_dir():
            shutil.rmtree(progress_dir)  # the results are written: nothing left to resume
    return AttackRun(evals[-1], metrics, results, out_dir)


def _gallery(clf: Classifier, x: np.ndarray, x_adv: np.ndarray, rec: Records) -> dict[str, Any]:
    """A few examples with the model's confidences, so the report needs only results.json."""
    import torch

    from aegis.report.gallery import build_gallery, shown_indices

    shown = shown_indices(rec)

    def probs(v: np.ndarray) -> np.ndarray:
        z = clf.logits(torch.from_numpy(np.ascontiguousarray(v[shown])).to(clf.device))
        z = z.detach().float().cpu()
        sums = z.sum(1)
        if z.numel() and z.min() >= 0 and z.max() <= 1 and bool(((sums - 1).abs() < 1e-4).all()):
            return z.numpy()  # the model already outputs probabilities
        return torch.softmax(z, 1).numpy()

    return build_gallery(x[shown], x_adv[shown], rec, shown, probs(x), probs(x_adv), clf.bounds)


def _naive_summary(
    naive: Classifier,
    dataset: Dataset,
    y: np.ndarray,
    per_budget: list[tuple[float, Records]],
    adaptive_head: Records,
    success_threshold: float | None,
) -> dict[str, Any]:
    """The naive evaluation's numbers, stored beside (never instead of) the adaptive ones."""
    import torch

    k = min(len(dataset.x), PROBE)
    probe = sanity.probe_model(naive, torch.from_numpy(dataset.x[:k]), torch.from_numpy(y[:k]))
    head_eps, head = per_budget[-1]
    naive_acc = adversarial_accuracy(head)
    adaptive_acc = adversarial_accuracy(adaptive_head)
    return {
        "misleading": True,
        "note": "gradients as torch computes them through the raw preprocessing (zero through "
        "steps outside torch or rounding) and one draw of random steps: an attack that cannot "
        "see the model, not a robust model; the adaptive numbers are the evaluation",
        "eps": head_eps,
        "clean_accuracy": clean_accuracy(head),
        "adversarial_accuracy": naive_acc,
        "adaptive_adversarial_accuracy": adaptive_acc,
        "overestimate": None
        if naive_acc is None or adaptive_acc is None
        else naive_acc - adaptive_acc,
        "metrics": summarize(head, naive.num_classes, success_threshold),
        "sanity": [f.to_dict() for f in probe],
        **(
            {
                "sweep": [
                    {"eps": e, "adversarial_accuracy": adversarial_accuracy(r)}
                    for e, r in per_budget
                ]
            }
            if len(per_budget) > 1
            else {}
        ),
        **({"defense": naive.describe_defense()} if isinstance(naive, DefendedClassifier) else {}),
    }


def _shifted(
    progress: Callable[[int, int], None] | None, offset: int, total: int
) -> ProgressFn | None:
    """The engine's per-run progress as (done, total) over every run of a sweep."""
    if progress is None:
        return None
    report = progress
    return lambda done: report(offset + done, total)


def _sanity(
    clf: Classifier,
    dataset: Dataset,
    y: np.ndarray,
    evals: list[Evaluation],
    attacks: list[Attack],
    per_budget: list[tuple[float, Records]],
    norm: str,
    minimal: bool,
) -> list[sanity.Flag]:
    import torch

    k = min(len(dataset.x), PROBE)
    flags = sanity.probe_model(clf, torch.from_numpy(dataset.x[:k]), torch.from_numpy(y[:k]))
    flags.append(sanity.check_ensemble(evals[-1].records, attacks))
    threat = ThreatModel(norm, math.inf if minimal else per_budget[-1][0])
    flags.append(sanity.check_unbounded(evals[-1].records, threat, clf))
    flags.append(
        sanity.check_sweep(
            [e for e, _ in per_budget],
            [adversarial_accuracy(r) for _, r in per_budget],
            len(dataset.x),
        )
    )
    for f in flags:
        if f.flagged:
            log.warning("sanity check %s: %s", f.name, f.evidence)
    return flags


def _write_run(
    out: Path,
    results: dict[str, Any],
    dataset: Dataset,
    rec: Records,
    x_adv: np.ndarray,
    attack: str | list[str],
    norm: str,
    eps: float,
    targets: int | np.ndarray | None,
    found: np.ndarray | None,
) -> Path:
    out_dir = rundir.prepare(out)
    rundir.write_npz(
        out_dir / "samples.npz",
        x=dataset.x,
        x_adv=x_adv,
        y=rec.y,
        clean_pred=rec.clean_pred,
        adv_pred=rec.adv_pred,
        target=rec.target,
    )
    from aegis.report.gallery import shown_indices
    from aegis.report.plots import save_curve, save_grid

    shown = shown_indices(rec)
    name = attack if isinstance(attack, str) else ",".join(attack)
    save_grid(
        out_dir / "grid.png",
        dataset.x[shown],
        x_adv[shown],
        rec.y[shown],
        rec.clean_pred[shown],
        rec.adv_pred[shown],
        title=f"{name} {norm} eps={eps:g}"
        + (f" target={targets}" if isinstance(targets, int) else ""),
    )
    results["files"] = {"samples": "samples.npz", "grid": "grid.png"}
    points = _curve_points(results)
    if points:
        save_curve(out_dir / "curve.png", points, norm=norm, title=name, minimal_norms=found)
        results["files"]["curve"] = "curve.png"
    rundir.finish(out_dir, results)
    return out_dir


def _curve_points(results: dict[str, Any]) -> list[tuple[float, float]]:
    """Accuracy-vs-ε points: a minimal-norm run's curve, else the sweep's budgets."""
    if "minimal" in results:
        return [
            (p["eps"], p["accuracy"])
            for p in results["minimal"]["curve"]
            if p["accuracy"] is not None
        ]
    if "sweep" in results:
        return [
            (s["eps"], s["metrics"]["adversarial_accuracy"])
            for s in results["sweep"]
            if s["metrics"]["adversarial_accuracy"] is not None
        ]
    return []
