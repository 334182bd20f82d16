"""Run an audit: every evaluation for every model, into one run directory, judged by thresholds.

Each evaluation runs through its existing entry point (``run_attack``, ``compare_defenses``,
``run_detect``, ``run_certify``, ``run_poisoning``, ``run_extraction``, ``run_membership``) into
``out/<index>-<type>-<model stem>/`` (``out/<index>-<type>/`` for ``poison`` and ``membership``,
which train their own models), with its own ``results.json`` and ``report.html``. Then
``out/results.json`` (kind ``audit``) holds the config, one summary per sub-run (headline
figures, path, every threshold with value, required and passed) and the overall ``passed``.

A threshold whose figure is missing fails with a reason; an evaluation that raises an
:class:`~aegis.errors.AegisError` is recorded as failed (``error``) and the audit goes on.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from aegis.audit.config import (
    MODEL_FREE,
    AttackEval,
    AuditConfig,
    CertifyEval,
    DefendEval,
    DetectEval,
    ExtractEval,
    MembershipEval,
    PoisonEval,
)
from aegis.errors import AegisError

log = logging.getLogger(__name__)

Figures = dict[str, float | None]


def _get(tree: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _extreme(values: list[Any], pick: Any) -> float | None:
    nums = [n for n in (_num(v) for v in values) if n is not None]
    return pick(nums) if nums else None


# -- one runner per type: (results of the sub-run, headline figures) ----------------------


def _attack(ev: AttackEval, model: str, cfg: AuditConfig, out: Path) -> tuple[Any, Figures]:
    from aegis.api import run_attack

    run = run_attack(
        model,
        cfg.data,
        labels=cfg.labels,
        attack=ev.attack,
        norm=ev.norm,
        eps=list(ev.eps),
        limit=cfg.limit,
        seed=cfg.seed,
        out=out,
        preprocess=list(ev.preprocess),
        executor=cfg.executor.name,
        workers=cfg.executor.workers,
        ray_address=cfg.executor.address,
        **ev.params,
    )
    m = run.metrics
    return run.results, {
        "clean_accuracy": _num(m.get("clean_accuracy")),
        "adversarial_accuracy": _num(m.get("adversarial_accuracy")),
        "success_rate": _num(_get(m, "success", "rate")),
    }


def _defend(ev: DefendEval, model: str, cfg: AuditConfig, out: Path) -> tuple[Any, Figures]:
    from aegis.defenses.compare import compare_defenses

    res = compare_defenses(
        model,
        cfg.data,
        models=list(ev.models),
        preprocess=list(ev.preprocess),
        detectors=list(ev.detectors),
        attack=ev.attack,
        norm=ev.norm,
        eps=ev.eps,
        labels=cfg.labels,
        limit=cfg.limit,
        seed=cfg.seed,
        out=out,
    )
    rows = res.get("rows") or []
    base = [r for r in rows if r.get("kind") == "base"]
    defended = [r for r in rows if r.get("kind") != "base"]
    return res, {
        "base_adversarial_accuracy": _extreme([r.get("adversarial_accuracy") for r in base], min),
        "clean_accuracy": _extreme([r.get("clean_accuracy") for r in defended], min),
        "adversarial_accuracy": _extreme([r.get("adversarial_accuracy") for r in defended], min),
    }


def _detect(ev: DetectEval, model: str, cfg: AuditConfig, out: Path) -> tuple[Any, Figures]:
    from aegis.defenses.detection import run_detect

    res = run_detect(
        model,
        cfg.data,
        detector=ev.detector,
        attack=ev.attack,
        norm=ev.norm,
        eps=ev.eps,
        fpr=ev.fpr,
        fit_limit=ev.fit_limit,
        adaptive_steps=ev.adaptive_steps,
        labels=cfg.labels,
        limit=cfg.limit,
        seed=cfg.seed,
        out=out,
        **ev.params,
    )
    d = res.get("detection")
    return res, {
        "detection_auc": _num(_get(d, "adaptive", "roc_auc")),
        "robust_accuracy": _num(_get(d, "worst_case", "robust_accuracy")),
        "clean_flagged": _num(_get(d, "clean_flagged")),
    }


def _certify(ev: CertifyEval, model: str, cfg: AuditConfig, out: Path) -> tuple[Any, Figures]:
    from aegis.defenses.certification import Smoothing, run_certify

    res = run_certify(
        model,
        cfg.data,
        smoothing=Smoothing(sigma=ev.sigma, n0=ev.n0, n=ev.n, alpha=ev.alpha),
        radii=list(ev.radii),
        labels=cfg.labels,
        limit=cfg.limit,
        seed=cfg.seed,
        out=out,
    )
    c = res.get("certification")
    radius = ev.require.radius if ev.require.radius is not None else max(ev.radii)
    at = [
        r.get("accuracy")
        for r in (_get(c, "certified_accuracy") or [])
        if _num(r.get("radius")) is not None and math.isclose(r["radius"], radius)
    ]
    return res, {
        "accuracy": _num(_get(c, "accuracy")),
        f"certified_accuracy@{radius:g}": _extreme(at, min),
        "abstain_rate": _num(_get(c, "abstain_rate")),
    }


def _poison(ev: PoisonEval, cfg: AuditConfig, out: Path) -> tuple[Any, Figures]:
    from aegis.poisoning import run_poisoning

    res = run_poisoning(
        cfg.data,
        attack=ev.attack,
        rate=ev.rate,
        target=ev.target,
        trigger=ev.trigger,
        defenses=list(ev.defenses),
        epochs=ev.epochs,
        train_limit=ev.train_limit,
        test_limit=cfg.limit,
        seed=cfg.seed,
        out=out,
    )
    p = res.get("poisoning")
    cleaned = [_get(d, "cleaned", "backdoor", "rate") for d in (_get(p, "defenses") or {}).values()]
    return res, {
        "backdoor_success": _num(_get(p, "models", "poisoned", "backdoor", "rate")),
        "cleaned_backdoor_success": _extreme(cleaned, min),
        "clean_accuracy": _num(_get(p, "models", "poisoned", "clean_accuracy")),
    }


def _extract(ev: ExtractEval, model: str, cfg: AuditConfig, out: Path) -> tuple[Any, Figures]:
    from aegis.leakage import run_extraction

    res = run_extraction(
        model,
        cfg.data,
        budgets=list(ev.budgets),
        outputs=list(ev.outputs),
        attack=ev.attack,
        norm=ev.norm,
        eps=ev.eps,
        steps=ev.steps,
        transfer_limit=ev.transfer_limit,
        labels=cfg.labels,
        limit=cfg.limit,
        seed=cfg.seed,
        out=out,
    )
    runs = _get(res, "extraction", "runs") or []
    return res, {
        "extraction_fidelity": _extreme([r.get("fidelity") for r in runs], max),
        "transfer_success": _extreme([_get(r, "transfer", "success_rate") for r in runs], max),
    }


def _membership(ev: MembershipEval, cfg: AuditConfig, out: Path) -> tuple[Any, Figures]:
    from aegis.leakage import run_membership

    res = run_membership(
        cfg.data,
        variants=list(ev.variants),
        shadows=ev.shadows,
        member_fraction=ev.member_fraction,
        limit=cfg.limit,
        labels=cfg.labels,
        seed=cfg.seed,
        out=out,
    )
    aucs = [
        a.get("roc_auc")
        for v in (_get(res, "membership", "variants") or [])
        for a in (v.get("attacks") or {}).values()
    ]
    return res, {"membership_auc": _extreme(aucs, max)}


# -- thresholds ---------------------------------------------------------------------------


def _figure_of(threshold: str, ev: Any) -> str:
    """``min_adversarial_accuracy`` → ``adversarial_accuracy`` (the headline figure judged)."""
    figure = threshold.removeprefix("min_").removeprefix("max_")
    if figure == "certified_accuracy":
        radius = ev.require.radius if ev.require.radius is not None else max(ev.radii)
        figure = f"certified_accuracy@{radius:g}"
    return figure


def judge(ev: Any, figures: Figures) -> list[dict[str, Any]]:
    """One entry per threshold set in ``ev.require``: figure, value, required, passed."""
    checks: list[dict[str, Any]] = []
    for key, required in ev.require.model_dump().items():
        if required is None or key == "radius":
            continue
        figure = _figure_of(key, ev)
        value = figures.get(figure)
        check: dict[str, Any] = {
            "threshold": key,
            "figure": figure,
            "value": value,
            "required": f"{'>=' if key.startswith('min_') else '<='} {required:g}",
        }
        if value is None or math.isnan(value):
            check["passed"] = False
            check["reason"] = f"{figure} is missing from the results, so it cannot pass"
        else:
            check["passed"] = value >= required if key.startswith("min_") else value <= required
        checks.append(check)
    return checks


def _dir_name(index: int, kind: str, model: str | None) -> str:
    return f"{index}-{kind}" if model is None else f"{index}-{kind}-{Path(model).stem}"


def run_audit(config: AuditConfig, out: str | Path) -> dict[str, Any]:
    """Run every evaluation of ``config`` for every model into ``out``; return (and write to
    ``out/results.json``) the audit results. ``results["passed"]`` is true only if every
    evaluation ran and every threshold passed; ``results["errors"]`` counts evaluations that
    failed to run."""
    from aegis.io import rundir

    out_dir = rundir.prepare(Path(out))
    summaries: list[dict[str, Any]] = []
    for index, ev in enumerate(config.evaluations):
        targets: list[str | None] = [None] if ev.type in MODEL_FREE else list(config.models)
        for model in targets:
            sub = out_dir / _dir_name(index, ev.type, model)
            entry: dict[str, Any] = {
                "index": index,
                "type": ev.type,
                "name": ev.name or ev.type,
                "model": model,
                "out_dir": sub.name,
            }
            figures: Figures = {}
            try:
                if isinstance(ev, PoisonEval):
                    _, figures = _poison(ev, config, sub)
                elif isinstance(ev, MembershipEval):
                    _, figures = _membership(ev, config, sub)
                elif model is not None:
                    runner: Any = {
                        "attack": _attack,
                        "defend": _defend,
                        "detect": _detect,
                        "certify": _certify,
                        "extract": _extract,
                    }[ev.type]
                    _, figures = runner(ev, model, config, sub)
            except AegisError as exc:
                log.warning("audit: evaluation %d (%s) failed: %s", index, ev.type, exc)
                entry.update(status="error", error=str(exc), figures={}, checks=[], passed=False)
            else:
                checks = judge(ev, figures)
                entry.update(
                    status="ok",
                    figures=figures,
                    checks=checks,
                    passed=all(c["passed"] for c in checks),
                )
            summaries.append(entry)
    errors = sum(e["status"] == "error" for e in summaries)
    results: dict[str, Any] = {
        **rundir.header(config.seed, "audit"),
        "config": config.model_dump(mode="json"),
        "evaluations": summaries,
        "errors": errors,
        "passed": errors == 0 and all(e["passed"] for e in summaries),
    }
    rundir.finish(out_dir, results)  # report.html (the generic renderer), then results.json
    results["out_dir"] = str(out_dir)
    return results
