"""What ``aegis attack`` prints about a finished run (from its results, nothing recomputed)."""

from __future__ import annotations

from typing import Any

from aegis.cli.formatting import fmt, pct


def _executor_note(executor: Any) -> str:
    """`` · 4 Ray workers`` for a run on Ray; nothing for a local one."""
    if not isinstance(executor, dict) or executor.get("name") != "ray":
        return ""
    return f" · {executor.get('workers')} Ray workers"


def _fmt_eps(v: float | str) -> str:
    return v if isinstance(v, str) else f"{v:.4g}"


def print_summary(run: Any) -> None:
    """What ``aegis attack`` prints once the run is written: the setup, the metrics, the
    warnings and remedies, where the files are and the verdict."""
    from rich.console import Console

    m = run.metrics
    res = run.results
    console = Console()
    _print_setup(res, m, console)
    _print_metrics(m, console)
    _print_success(res, m, console)
    if "sweep" in res:
        _print_sweep(res["sweep"], console)
    if "minimal" in res:
        _print_minimal(res["minimal"], console)
    if "defense" in res:
        _print_defense(res["defense"], m, console)
    _print_warnings(res, console)
    if run.out_dir is not None:
        files = "  ".join(f"{k}: {run.out_dir / v}" for k, v in res["files"].items())
        console.print(f"results: {run.out_dir / 'results.json'}  {files}", markup=False)
    console.print(f"verdict: {run.verdict}", markup=False)


def _print_setup(res: dict[str, Any], m: dict[str, Any], console: Any) -> None:
    """The model, data, attack and budget line, and a note when aegis recovered logits."""
    cfg = res["config"]
    data = res["data"]
    console.print(
        f"model {res['model']['source'] or res['model']['name']} · data {data['name']} "
        f"({m['n']} inputs) · attack {cfg['attack']['name']} {cfg['threat']['norm']} "
        f"ε={_fmt_eps(cfg['threat']['eps'])}"
        + (
            f" of the bounds' width (= {cfg['threat']['eps_model_units']:.4g} in the model's units)"
            if "eps_model_units" in cfg["threat"]
            else ""
        )
        + (f" · target {cfg['targets']}" if cfg["targets"] is not None else "")
        + _executor_note(cfg.get("executor"))
    )
    outputs = str((res["model"].get("provenance") or {}).get("outputs", ""))
    if outputs.startswith("logits recovered"):  # aegis changed what the attacks see
        console.print(f"model outputs: {outputs} (--keep-softmax attacks them as they are)")


def _print_metrics(m: dict[str, Any], console: Any) -> None:
    """The clean / under-attack table (accuracy and macro precision, recall, F1)."""
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("clean", justify="right")
    table.add_column("under attack", justify="right")
    na = "labels" in m  # no labels: accuracy, precision, recall and F1 say nothing
    cell = (lambda v: "n/a") if na else pct
    table.add_row("accuracy", cell(m["clean_accuracy"]), cell(m["adversarial_accuracy"]))
    for key in ("precision", "recall", "f1"):
        table.add_row(
            f"macro {key}", cell(m["clean"][f"macro_{key}"]), cell(m["adversarial"][f"macro_{key}"])
        )
    console.print(table)
    if "labels" in m:
        console.print(f"labels: {m['labels']}", markup=False)


def _print_success(res: dict[str, Any], m: dict[str, Any], console: Any) -> None:
    """The success rate, the median norms of the successful and the query counts."""
    s = m["success"]
    nrm = m["norms"]
    why = "true label = target" if "labels" not in m else "already predicted as the target"
    extra = f", {s['excluded_target']} excluded ({why})" if s["excluded_target"] else ""
    console.print(
        f"success rate {pct(s['rate'])} ({s['successes']}/{s['attacked']} attacked{extra}); "
        f"median L∞ {fmt(nrm['linf']['median'])}, L2 {fmt(nrm['l2']['median'])}, "
        f"L0 {fmt(nrm['l0']['median'])} of the successful; "
        f"{m['calls']['gradient_total']} gradients, {m['calls']['forward_total']} forward "
        f"queries (median {fmt(m['calls']['forward_median_per_attacked'])} per attacked "
        f"input) in {res['seconds']:.1f} s"
    )


def _print_sweep(points: list[dict[str, Any]], console: Any) -> None:
    """One row per ε of an ``--eps`` sweep."""
    from rich.table import Table

    sweep = Table("ε", "accuracy under attack", "success rate", header_style="bold")
    for point in points:
        sweep.add_row(
            f"{point['eps']:g}",
            pct(point["metrics"]["adversarial_accuracy"]),
            pct(point["metrics"]["success"]["rate"]),
        )
    console.print(sweep)


def _print_warnings(res: dict[str, Any], console: Any) -> None:
    """The sanity checks that raised a flag, and what the remedy for them changed."""
    for flag in res.get("sanity", []):
        if flag["flagged"]:
            console.print(f"sanity: {flag['name']}: {flag['evidence']}", markup=False)
    rem = res.get("remedies")
    if rem:
        console.print(
            f"remedy for {', '.join(rem['flags'])}: {'; '.join(rem['what'])}; accuracy under "
            f"attack {pct(rem['naive_adversarial_accuracy'])} without it, "
            f"{pct(rem['remedied_adversarial_accuracy'])} with it ({rem['points_gained']} more "
            f"inputs fooled)"
            + (f"; still raised: {', '.join(rem['still_raised'])}" if rem["still_raised"] else ""),
            markup=False,
        )


def _print_minimal(mn: dict[str, Any], console: Any) -> None:
    perc = mn["percentiles"]
    console.print(
        f"minimal {mn['norm']} perturbation: median {fmt(mn['median'])} "
        f"(p10 {fmt(perc['p10'])}, p90 {fmt(perc['p90'])}); found for {mn['found']} of "
        f"{mn['attacked']} attacked inputs"
    )
    curve = mn["curve"]
    step = max(1, len(curve) // 6)
    console.print(
        "accuracy vs ε: "
        + ", ".join(
            f"{p['eps']:.3g} → {pct(p['accuracy'])}"
            for p in curve[::step] + ([] if (len(curve) - 1) % step == 0 else curve[-1:])
        ),
        markup=False,
    )


def _print_defense(defense: dict[str, Any], m: dict[str, Any], console: Any) -> None:
    how = []
    if defense["bpda"]:
        how.append(f"BPDA for {', '.join(defense['bpda'])}")
    if defense["eot"]:
        eot = defense["eot"]
        how.append(f"EOT over {eot['samples']} draws for {', '.join(eot['steps'])}")
    mode = (
        "adaptive" + (f" ({'; '.join(how)})" if how else " (exact gradients)")
        if defense["adaptive"]
        else "NAIVE (no BPDA/EOT: the numbers are misleading)"
    )
    console.print(f"defense: {' → '.join(defense['preprocess'])} · {mode}", markup=False)
    console.print(
        f"accuracy under attack, {'adaptive' if defense['adaptive'] else 'naive'}: "
        f"{pct(m['adversarial_accuracy'])}",
        markup=False,
    )
    if "naive" in defense:
        nv = defense["naive"]
        console.print(
            f"accuracy under attack, naive (MISLEADING: gradients through the raw "
            f"preprocessing, one draw of random steps): {pct(nv['adversarial_accuracy'])}",
            markup=False,
        )
