"""The audit workflow: every evaluation for every model, into one run directory, judged by
thresholds.

Each evaluation runs through its own workflow (``run_attack``, ``compare_defenses``,
``run_detect``, ``run_certify``, ``run_poisoning``, ``run_extraction``, ``run_membership``) into
``out/<index>-<type>-<model stem>/`` (``out/<index>-<type>/`` for ``poison`` and ``membership``,
which train their own models), with its own ``results.json`` and ``report.html``. Then
``out/results.json`` (kind ``audit``) holds the config, one summary per sub-run (headline
figures, path, every threshold with value, required and passed) and the overall ``passed``.

A threshold whose figure is missing fails with a reason; an evaluation that raises an
:class:`~aegis.errors.AegisError` is recorded as failed (``error``) and the audit goes on.
The headline figures are always read from the sub-run's ``results.json``, and
``out/resume.json`` keeps a key of every complete sub-run, so ``run_audit(..., resume=True)``
reads finished evaluations back instead of running them again.
"""

from __future__ import annotations

import hashlib
import json
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
from aegis.workflows.result import WorkflowResult

log = logging.getLogger("aegis.audit.run")  # the name its log lines always carried

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


# -- per type: a runner that writes the sub-run's directory, and its headline figures -------
# -- (read from the sub-run's results.json, so a resumed audit reads them as a fresh one) --


def _attack(ev: AttackEval, model: str, cfg: AuditConfig, out: Path, resume: bool) -> None:
    from aegis.workflows.attack import run_attack

    run_attack(
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
        resume=resume,
        executor=cfg.executor.name,
        workers=cfg.executor.workers,
        ray_address=cfg.executor.address,
        **ev.params,
    )


def _attack_figures(ev: AttackEval, res: dict[str, Any]) -> Figures:
    m = res.get("metrics")
    return {
        "clean_accuracy": _num(_get(m, "clean_accuracy")),
        "adversarial_accuracy": _num(_get(m, "adversarial_accuracy")),
        "success_rate": _num(_get(m, "success", "rate")),
    }


def _defend(ev: DefendEval, model: str, cfg: AuditConfig, out: Path, resume: bool) -> None:
    from aegis.workflows.defend import compare_defenses

    compare_defenses(
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


def _defend_figures(ev: DefendEval, res: dict[str, Any]) -> Figures:
    rows = res.get("rows") or []
    base = [r for r in rows if r.get("kind") == "base"]
    defended = [r for r in rows if r.get("kind") != "base"]
    return {
        "base_adversarial_accuracy": _extreme([r.get("adversarial_accuracy") for r in base], min),
        "clean_accuracy": _extreme([r.get("clean_accuracy") for r in defended], min),
        "adversarial_accuracy": _extreme([r.get("adversarial_accuracy") for r in defended], min),
    }


def _detect(ev: DetectEval, model: str, cfg: AuditConfig, out: Path, resume: bool) -> None:
    from aegis.workflows.detect import run_detect

    run_detect(
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


def _detect_figures(ev: DetectEval, res: dict[str, Any]) -> Figures:
    d = res.get("detection")
    return {
        "detection_auc": _num(_get(d, "adaptive", "roc_auc")),
        "robust_accuracy": _num(_get(d, "worst_case", "robust_accuracy")),
        "clean_flagged": _num(_get(d, "clean_flagged")),
    }


def _certify(ev: CertifyEval, model: str, cfg: AuditConfig, out: Path, resume: bool) -> None:
    from aegis.defenses.certification import Smoothing
    from aegis.workflows.certify import run_certify

    run_certify(
        model,
        cfg.data,
        smoothing=Smoothing(sigma=ev.sigma, n0=ev.n0, n=ev.n, alpha=ev.alpha),
        radii=list(ev.radii),
        labels=cfg.labels,
        limit=cfg.limit,
        seed=cfg.seed,
        out=out,
    )


def _certify_figures(ev: CertifyEval, res: dict[str, Any]) -> Figures:
    c = res.get("certification")
    radius = ev.require.radius if ev.require.radius is not None else max(ev.radii)
    at = [
        r.get("accuracy")
        for r in (_get(c, "certified_accuracy") or [])
        if _num(r.get("radius")) is not None and math.isclose(r["radius"], radius)
    ]
    return {
        "accuracy": _num(_get(c, "accuracy")),
        f"certified_accuracy@{radius:g}": _extreme(at, min),
        "abstain_rate": _num(_get(c, "abstain_rate")),
    }


def _poison(ev: PoisonEval, cfg: AuditConfig, out: Path) -> None:
    from aegis.workflows.poison import run_poisoning

    run_poisoning(
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


def _poison_figures(ev: PoisonEval, res: dict[str, Any]) -> Figures:
    p = res.get("poisoning")
    cleaned = [_get(d, "cleaned", "backdoor", "rate") for d in (_get(p, "defenses") or {}).values()]
    return {
        "backdoor_success": _num(_get(p, "models", "poisoned", "backdoor", "rate")),
        "cleaned_backdoor_success": _extreme(cleaned, min),
        "clean_accuracy": _num(_get(p, "models", "poisoned", "clean_accuracy")),
    }


def _extract(ev: ExtractEval, model: str, cfg: AuditConfig, out: Path, resume: bool) -> None:
    from aegis.workflows.extract import run_extraction

    run_extraction(
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


def _extract_figures(ev: ExtractEval, res: dict[str, Any]) -> Figures:
    runs = _get(res, "extraction", "runs") or []
    return {
        "extraction_fidelity": _extreme([r.get("fidelity") for r in runs], max),
        "transfer_success": _extreme([_get(r, "transfer", "success_rate") for r in runs], max),
    }


def _membership(ev: MembershipEval, cfg: AuditConfig, out: Path) -> None:
    from aegis.workflows.membership import run_membership

    run_membership(
        cfg.data,
        variants=list(ev.variants),
        shadows=ev.shadows,
        member_fraction=ev.member_fraction,
        limit=cfg.limit,
        labels=cfg.labels,
        seed=cfg.seed,
        out=out,
    )


def _membership_figures(ev: MembershipEval, res: dict[str, Any]) -> Figures:
    aucs = [
        a.get("roc_auc")
        for v in (_get(res, "membership", "variants") or [])
        for a in (v.get("attacks") or {}).values()
    ]
    return {"membership_auc": _extreme(aucs, max)}


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


_RUNNERS: dict[str, Any] = {
    "attack": _attack,
    "defend": _defend,
    "detect": _detect,
    "certify": _certify,
    "extract": _extract,
}
_FIGURES: dict[str, Any] = {
    "attack": _attack_figures,
    "defend": _defend_figures,
    "detect": _detect_figures,
    "certify": _certify_figures,
    "extract": _extract_figures,
    "poison": _poison_figures,
    "membership": _membership_figures,
}


def _run(ev: Any, model: str | None, cfg: AuditConfig, out: Path, resume: bool) -> None:
    """Run one evaluation into ``out`` (which then holds its ``results.json``)."""
    if isinstance(ev, PoisonEval):
        _poison(ev, cfg, out)
    elif isinstance(ev, MembershipEval):
        _membership(ev, cfg, out)
    elif model is not None:
        _RUNNERS[ev.type](ev, model, cfg, out, resume)


# -- resume ---------------------------------------------------------------------------------

STATE = "resume.json"
"""``OUT/resume.json``: the key of every evaluation whose run directory is complete."""


def _digest(path: str | None, cache: dict[str, str | None]) -> str | None:
    """The SHA-256 of a model, data or labels file (None for a built-in name or a folder)."""
    from aegis.io.digest import file_sha256

    if path is None:
        return None
    if path not in cache:
        try:
            cache[path] = file_sha256(path) if Path(path).is_file() else None
        except OSError:  # unreadable: the evaluation itself reports it
            cache[path] = None
    return cache[path]


def _key(ev: Any, model: str | None, cfg: AuditConfig, cache: dict[str, str | None]) -> str:
    """What makes an evaluation's results: aegis' version, the evaluation's settings, the
    model, data and labels (by content where they are files), the limit and the seed."""
    from aegis._version import __version__

    spec = {
        "aegis": __version__,
        "evaluation": ev.model_dump(mode="json"),
        "model": model,
        "model_sha256": _digest(model, cache),
        "data": cfg.data,
        "data_sha256": _digest(cfg.data, cache),
        "labels": cfg.labels,
        "labels_sha256": _digest(cfg.labels, cache),
        "limit": cfg.limit,
        "seed": cfg.seed,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


class _Finished:
    """The evaluations of ``out`` whose run directories are complete, by directory name,
    each with its :func:`_key`; kept in ``OUT/resume.json`` (written atomically)."""

    def __init__(self, out_dir: Path, resume: bool) -> None:
        self.path = out_dir / STATE
        self.keys: dict[str, str] = {}
        if resume and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                self.keys = {str(k): str(v) for k, v in dict(data["finished"]).items()}
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("audit: %s is unreadable; every evaluation runs again", self.path)
        elif not resume:
            self.path.unlink(missing_ok=True)

    def results(self, sub: Path, key: str) -> dict[str, Any] | None:
        """The stored results of ``sub``, if it finished with this key."""
        from aegis.io import rundir

        if self.keys.get(sub.name) != key:
            return None
        try:
            return rundir.read_results(sub)
        except AegisError:
            return None

    def _write(self) -> None:
        from aegis.io import rundir

        rundir.write_json(self.path, {"finished": self.keys})

    def start(self, sub: Path) -> None:
        if self.keys.pop(sub.name, None) is not None:
            self._write()

    def done(self, sub: Path, key: str) -> None:
        self.keys[sub.name] = key
        self._write()


def run_audit(
    config: AuditConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False
) -> WorkflowResult:
    """Run every evaluation of ``config`` for every model into ``out``; return (and write to
    ``out/results.json``) the audit results (kind ``audit``). ``results["passed"]`` is true only
    if every evaluation ran and every threshold passed; ``results["errors"]`` counts evaluations
    that failed to run.

    ``resume=True`` continues an interrupted audit in ``out``: an evaluation whose run
    directory is complete, for the same aegis version, settings, model, data, limit and seed
    (``OUT/resume.json`` keeps each one's key), is read back instead of run again, and an
    interrupted attack evaluation resumes from its finished batches
    (``OUT/<evaluation>/progress/``, see :func:`aegis.workflows.attack.run_attack`). The
    results equal those of an uninterrupted audit, timings and timestamps aside;
    ``results["reused"]`` (not stored) names the evaluations read back. ``out`` is claimed
    first (see :mod:`aegis.io.claim`): a directory holding an earlier audit is refused unless
    ``resume`` continues it or ``overwrite`` removes its files.
    """
    from aegis.io.claim import claimed

    with claimed(Path(out), resume=resume, overwrite=overwrite) as out_dir:
        return WorkflowResult.of("audit", _audit(config, out_dir, resume))


def _audit(config: AuditConfig, out_dir: Path, resume: bool) -> dict[str, Any]:
    from aegis.io import rundir
    from aegis.workflows.rundir_writer import finish_run

    finished = _Finished(out_dir, resume)
    digests: dict[str, str | None] = {}
    reused: list[str] = []
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
                key = _key(ev, model, config, digests)
                stored = finished.results(sub, key) if resume else None
                if stored is not None:
                    log.info("audit: evaluation %d (%s) finished before; read back", index, sub)
                    reused.append(sub.name)
                else:
                    finished.start(sub)
                    _run(ev, model, config, sub, resume)
                    stored = rundir.read_results(sub)
                    finished.done(sub, key)
                figures = _FIGURES[ev.type](ev, stored)
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
    finish_run(out_dir, results)  # report.html (the generic renderer), then results.json
    results["out_dir"] = str(out_dir)
    results["reused"] = reused
    return results
