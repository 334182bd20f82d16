"""The attack workflow, the one Python call behind ``aegis attack``: load, attack, measure,
write the run directory (``aegis.api`` re-exports it)."""

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
from aegis.errors import ConfigError, UsageError
from aegis.executors import Executor, create_executor
from aegis.io import rundir
from aegis.io.claim import PROGRESS, claimed
from aegis.io.data import Dataset
from aegis.io.inputs import PREDICTED, load_inputs
from aegis.metrics import (
    adversarial_accuracy,
    clean_accuracy,
    confusion_matrices,
    minimal_norms,
    summarize,
)
from aegis.model import Classifier
from aegis.normalization import check_normalization
from aegis.records import Records
from aegis.registry import create_all
from aegis.threat import ThreatModel
from aegis.workflows.attack_files import gallery, write_attack_run
from aegis.workflows.remedy import plan_remedy, run_remedies

log = logging.getLogger("aegis.api")  # the name its log lines always carried

DEFAULT_EPS = 0.3
"""The budget when none is given to a bounded attack (MNIST's customary L∞ budget)."""

PROBE = 64
"""Clean inputs the model-probing sanity checks look at."""

NORMALIZATION_PROBE = 256
"""Labeled clean inputs the normalization check scores with each preset."""


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


def _budgets(eps: float | str | Sequence[float] | None, minimal: bool) -> list[float]:
    """The budgets to evaluate, ascending; a minimal-norm attack defaults to unbounded."""
    if eps is None:
        return [math.inf] if minimal else [DEFAULT_EPS]
    values = [float(eps)] if isinstance(eps, (int, float, str)) else [float(e) for e in eps]
    bad = [e for e in values if not e >= 0]  # also NaN
    if not values or bad:
        raise ConfigError(f"eps must be a number >= 0 (or inf), got {bad[0] if bad else eps!r}")
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
    overwrite: bool = False,
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
    uninterrupted run. The folder is removed once the run's results are written. ``out`` is
    claimed first (:mod:`aegis.io.claim`): a second run into it stops with one line, and a
    directory holding an earlier run's checkpoints or results is refused unless ``resume``
    continues it or ``overwrite`` removes the old run's files first.

    ``executor="ray"`` shards the batches over Ray workers (``workers`` of them, default one
    per GPU, else one per CPU; a local Ray instance, or the cluster at ``ray_address``) with
    the records of the local run; ``results["config"]["executor"]`` says which ran. An
    :class:`~aegis.executors.Executor` instance may be passed instead of a name.
    """
    plan = plan_attack(
        attack,
        norm,
        eps,
        targets=targets,
        success_threshold=success_threshold,
        seed=seed,
        batch_size=batch_size,
        attack_misclassified=attack_misclassified,
        preprocess=preprocess,
        defended=isinstance(model, DefendedClassifier),
        adaptive=adaptive,
        eot_samples=eot_samples,
        compare_naive=compare_naive,
        executor=executor,
        workers=workers,
        ray_address=ray_address,
        **attack_params,
    )
    loading = (labels, limit, data_options, model_options)
    if out is None:
        return _attack(plan, model, data, loading, None, progress, on_loaded)
    with claimed(Path(out), resume=resume, overwrite=overwrite) as out_dir:
        return _attack(plan, model, data, loading, out_dir, progress, on_loaded)


@dataclass(frozen=True)
class AttackPlan:
    """An attack run's settings, all checked before any file is read or written."""

    attacks: list[Attack]
    name: str
    norm: str
    budgets: list[float]
    minimal: bool
    targets: int | np.ndarray | None
    success_threshold: float | None
    seed: int
    batch_size: int | None
    attack_misclassified: bool
    preprocess: list[Preprocessor]
    adaptive: bool
    eot_samples: int | None
    compare_naive: bool
    runner: Executor

    @property
    def runs(self) -> list[float]:
        """The evaluations' budgets: the one unbounded run of a minimal-norm attack, else each."""
        return [math.inf] if self.minimal else self.budgets


def plan_attack(
    attack: str | list[str],
    norm: str,
    eps: float | str | Sequence[float] | None,
    *,
    targets: int | np.ndarray | None = None,
    success_threshold: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    attack_misclassified: bool = False,
    preprocess: Sequence[str | Preprocessor] | None = None,
    defended: bool = False,
    adaptive: bool = True,
    eot_samples: int | None = None,
    compare_naive: bool = False,
    executor: str | Executor = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    **attack_params: Any,
) -> AttackPlan:
    """Check every setting of ``run_attack`` (raising one ConfigError line) and build the
    attacks; nothing is loaded or written. ``defended``: the model is already behind
    preprocessing defenses."""
    if success_threshold is not None and not 0 <= success_threshold <= 1:
        raise ConfigError(
            f"success threshold must be a share in [0, 1], got {success_threshold} "
            "(write 0.9 for 90%)"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ConfigError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    steps = [parse_preprocess(p) for p in preprocess or []]
    if not (steps or defended) and (compare_naive or not adaptive or eot_samples is not None):
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
    ThreatModel(norm, budgets[0])  # validates the norm
    name = attack if isinstance(attack, str) else ",".join(attack)
    if norm == "linf" and any(1 < e < math.inf for e in budgets):
        raise ConfigError(
            f"eps {max(e for e in budgets if e < math.inf):g} is over the bounds' width: an L∞ "
            "budget is a fraction of it (1 already reaches every input in the box); give e.g. "
            "--eps 8/255 or 0.3"
        )
    if not minimal and math.isinf(budgets[-1]):
        raise ConfigError(
            f"eps inf (unbounded) is only for minimal-norm attacks (fmn, ddn, cw, ...); give "
            f"{name} a finite budget, e.g. --eps 0.3"
        )
    return AttackPlan(
        algo, name, norm, budgets, minimal, targets, success_threshold, seed, batch_size,
        attack_misclassified, steps, adaptive, eot_samples, compare_naive, runner,
    )  # fmt: skip


def _attack(
    plan: AttackPlan,
    model: Classifier | str | Path,
    data: Dataset | str | Path | tuple[np.ndarray, np.ndarray],
    loading: tuple[Any, int | None, dict[str, Any] | None, dict[str, Any] | None],
    out_dir: Path | None,
    progress: Callable[[int, int], None] | None,
    on_loaded: Callable[[Classifier, Dataset], None] | None,
) -> AttackRun:
    """Load, measure, assemble and (with ``out_dir``, already claimed) write one attack run."""
    clf, dataset, y = load_inputs(model, data, *loading, unlabeled=True)
    if (loading[3] or {}).get("keep_softmax") and not clf.differentiable:
        raise UsageError(
            f"--keep-softmax keeps a softmax aegis would remove from a visible graph, but "
            f"{clf.name} is query-only (no graph to change); drop --keep-softmax"
        )
    early = _normalization_flag(clf, dataset)
    if plan.preprocess:
        clf = defend(
            clf, plan.preprocess, adaptive=plan.adaptive, eot_samples=plan.eot_samples,
            seed=plan.seed,
        )  # fmt: skip
    if on_loaded is not None:
        on_loaded(clf, dataset)
    progress_dir = None if out_dir is None else out_dir / PROGRESS
    evals, per_budget, defense = _measure(plan, clf, dataset, y, progress, progress_dir)
    flags = early + _sanity(
        clf, dataset, y, evals, plan.attacks, per_budget, plan.norm, plan.minimal
    )
    head_adv, remedies = evals[-1].x_adv, None
    import torch

    remedy = plan_remedy(plan, clf, flags, torch.from_numpy(dataset.x[:PROBE]))
    if remedy is not None:  # a flag with a known remedy: run it, keep the worst case
        per_budget, head_adv, remedies = run_remedies(
            plan, remedy, dataset, y, per_budget, head_adv, flags
        )
        _recheck(flags, remedies, clf, per_budget, plan)
    results, x_adv, found = _assemble(
        plan, clf, dataset, evals, per_budget, defense, flags, head_adv, remedies
    )
    head = per_budget[-1][1]
    if out_dir is not None:
        write_attack_run(out_dir, results, dataset, head, x_adv, plan, per_budget[-1][0], found)
        if progress_dir is not None and progress_dir.is_dir():
            shutil.rmtree(progress_dir)  # the results are written: nothing left to resume
    return AttackRun(evals[-1], results["metrics"], results, out_dir)


def _measure(
    plan: AttackPlan,
    clf: Classifier,
    dataset: Dataset,
    y: np.ndarray,
    progress: Callable[[int, int], None] | None,
    progress_dir: Path | None,
) -> tuple[list[Evaluation], list[tuple[float, Records]], dict[str, Any] | None]:
    """Every evaluation (one per budget, or the one unbounded run), then the naive one."""
    n, runs = len(dataset.x), plan.runs
    passes = 2 if plan.compare_naive else 1

    def evaluate_all(target: Classifier, first: int) -> list[Evaluation]:
        return [
            evaluate(
                target,
                dataset.x,
                y,
                plan.attacks,
                ThreatModel(plan.norm, e, targeted=plan.targets is not None),
                targets=plan.targets,
                batch_size=plan.batch_size,
                seed=plan.seed,
                attack_misclassified=plan.attack_misclassified,
                progress=_shifted(progress, (first + number) * n, n * len(runs) * passes),
                checkpoint=None
                if progress_dir is None
                else progress_dir / f"evaluation-{first + number}",
                executor=plan.runner,
            )
            for number, e in enumerate(runs)
        ]

    evals = evaluate_all(clf, 0)
    per_budget = _by_budget(plan, evals)
    defense = None
    if isinstance(clf, DefendedClassifier):
        defense = clf.describe_defense()
        if plan.compare_naive:
            naive_clf = clf.with_adaptive(False)
            naive_evals = evaluate_all(naive_clf, len(runs))
            defense["naive"] = _naive_summary(
                naive_clf,
                dataset,
                y,
                _by_budget(plan, naive_evals),
                per_budget[-1][1],
                plan.success_threshold,
            )
            defense["naive"]["seconds"] = sum(ev.seconds for ev in naive_evals)
    elif plan.compare_naive:
        raise ConfigError("compare_naive needs a model behind preprocessing defenses")
    return evals, per_budget, defense


def _by_budget(plan: AttackPlan, done: list[Evaluation]) -> list[tuple[float, Records]]:
    """(budget, records) for every budget asked for, ascending."""
    if plan.minimal:
        unbounded = done[0].records
        return [
            (e, unbounded if math.isinf(e) else unbounded.within(plan.norm, e))
            for e in plan.budgets
        ]
    return [(e, ev.records) for e, ev in zip(plan.budgets, done, strict=True)]


def _assemble(
    plan: AttackPlan,
    clf: Classifier,
    dataset: Dataset,
    evals: list[Evaluation],
    per_budget: list[tuple[float, Records]],
    defense: dict[str, Any] | None,
    flags: list[sanity.Flag],
    x_adv: np.ndarray,
    remedies: dict[str, Any] | None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """results.json's content, the headline's adversarial inputs and (minimal-norm attacks)
    the minimal norms found. A flag its remedy cleared no longer makes the verdict
    SUSPICIOUS; the verdict says REMEDIED and ``remedies`` has the figures."""
    norm, minimal, threshold = plan.norm, plan.minimal, plan.success_threshold
    unbounded = evals[0]
    head_eps, head = per_budget[-1]
    found = None
    if minimal:
        lost = unbounded.records.success & ~head.success
        x_adv = np.where(lost[:, None, None, None], dataset.x, x_adv)
        r = unbounded.records
        found = getattr(r, norm)[r.success]
    cleared = set(remedies["remedied"]) if remedies else set()
    names = [name for name in sanity.raised(flags) if name not in cleared]
    labeled = dataset.y is not None
    moot = names if names and plan.targets is None and adversarial_accuracy(head) == 0.0 else []
    names = [name for name in names if name not in moot]  # nothing withstood: no gap is left
    metrics = summarize(head, clf.num_classes, threshold, names, labeled=labeled)
    if moot:
        metrics["verdict"]["moot"] = moot
        metrics["verdict"]["text"] = (
            f"(sanity flags {', '.join(moot)} are moot: no input withstood the attack) "
            + metrics["verdict"]["text"]
        )
    if cleared:
        metrics["verdict"]["remedied"] = sorted(cleared)
        metrics["verdict"]["text"] = (
            f"REMEDIED ({', '.join(sorted(cleared))}: see remedies): " + metrics["verdict"]["text"]
        )
    metrics["confusion"] = confusion_matrices(head, clf.num_classes) if labeled else None
    config = dict(evals[-1].config)
    config["threat"] = ThreatModel(norm, head_eps, plan.targets is not None).to_dict()
    if clf.units is not None and norm != "l0":  # budgets are fractions of the bounds' width
        width = clf.units[1] - clf.units[0]
        config["threat"]["eps_model_units"] = head_eps * width
        config["threat"]["units"] = f"fractions of the bounds' width {width:g}"
    config["minimal_norm"] = minimal
    results: dict[str, Any] = {
        **rundir.header(plan.seed),
        "model": clf.describe(),
        "data": {**dataset.to_dict(), "labels": "given" if labeled else PREDICTED},
        "config": {**config, "success_threshold": threshold},
        "metrics": metrics,
        "sanity": [f.to_dict() for f in flags],
        **({} if remedies is None else {"remedies": remedies}),
        "seconds": sum(ev.seconds for ev in evals),
        **({} if defense is None else {"defense": defense}),
        "records": head.to_dict(),
        "gallery": gallery(clf, dataset.x, x_adv, head),
        "files": {},
    }
    if minimal:
        finite = [e for e in plan.budgets if not math.isinf(e)]
        results["minimal"] = minimal_norms(unbounded.records, norm, finite or None)
    if len(plan.budgets) > 1:
        results["sweep"] = [
            {
                "eps": e,
                "metrics": summarize(rec, clf.num_classes, threshold, names, labeled=labeled),
                **({} if minimal else {"records": rec.to_dict()}),
            }
            for e, rec in per_budget
        ]
    return results, x_adv, found


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


def _recheck(
    flags: list[sanity.Flag],
    remedies: dict[str, Any],
    clf: Classifier,
    per_budget: list[tuple[float, Records]],
    plan: AttackPlan,
) -> None:
    """The checks read off the records, run again on the remedied ones: a flag they no longer
    raise was a symptom the remedy cured (it stays in ``sanity`` with its first evidence)."""
    raised = set(sanity.raised(flags))
    again = [
        sanity.check_unbounded(per_budget[-1][1], ThreatModel(plan.norm, per_budget[-1][0]), clf),
        sanity.check_sweep(
            [e for e, _ in per_budget],
            [adversarial_accuracy(r) for _, r in per_budget],
            len(per_budget[-1][1]),
        ),
    ]
    cured = [f.name for f in again if f.name in raised and not f.flagged]
    remedies["remedied"] = [*remedies["remedied"], *cured]
    remedies["rechecked"] = [
        {"name": f.name, "flagged": f.flagged, "evidence": f.evidence} for f in again
    ]


def _normalization_flag(clf: Classifier, dataset: Dataset) -> list[sanity.Flag]:
    """Whether a common normalization fits the labeled clean data clearly better than none:
    checked before the attack runs, so the warning comes first."""
    import torch

    if dataset.y is None:
        return []
    k = min(len(dataset.x), NORMALIZATION_PROBE)
    x, y = torch.from_numpy(dataset.x[:k]), torch.from_numpy(dataset.y[:k])
    found = check_normalization(clf, x, y)
    if found is None:
        return []
    scores = ", ".join(f"{name} {acc:.1%}" for name, acc in found.accuracy.items())
    if found.hint:
        log.warning("normalization: %s", found.hint)
    evidence = f"clean accuracy on {found.n} labeled inputs: {scores}"
    return [sanity.Flag("normalization", bool(found.hint), evidence, found.hint or "")]


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
