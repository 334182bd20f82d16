"""``aegis compare RUN_A RUN_B``: what got better or worse between two runs (the work is in
:mod:`aegis.report.diff`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from aegis.cli.options import EXIT_GATE
from aegis.errors import ConfigError


def compare(
    run_a: Annotated[Path, typer.Argument(help="The earlier run (directory or results.json).")],
    run_b: Annotated[Path, typer.Argument(help="The later run, compared against RUN_A.")],
    fail_on_worse: Annotated[
        float | None,
        typer.Option(
            help="Gate: exit with code 3 when a judged figure got worse by more than this "
            "(absolute; 0.01 is one point of accuracy)."
        ),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(help="Compare only the figures whose dotted path matches this regex."),
    ] = None,
    show_same: Annotated[
        bool, typer.Option("--show-same", help="Also list the figures that did not change.")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the comparison to this file.")
    ] = None,
) -> None:
    """What got better or worse between two runs, e.g. two versions of a model evaluated with
    the same command, read from their results.json alone.

        aegis compare runs/model-v1 runs/model-v2
        aegis compare runs/model-v1 runs/model-v2 --fail-on-worse 0.01 --only accuracy

    Each figure is paired by its dotted path (e.g. metrics.adversarial_accuracy,
    metrics.clean.recall.3 for class 3, rows[mnist_cnn_pgd].adversarial_accuracy) and judged
    from the model owner's side: higher accuracy, precision, recall, F1, detection AUC and
    certified accuracy are better; higher attack success, backdoor success and every leakage
    figure (membership AUC, extraction fidelity) are worse; other figures are listed as
    changed. Differences in what was run (kind, data, attack, threat) are printed first: they
    make the figures incomparable.

    Exit codes: 0 no judged figure worse than --fail-on-worse allows (or no gate), 1 a run
    directory cannot be read, 3 the gate failed (CI: fail the build).
    """
    from rich.console import Console
    from rich.table import Table

    from aegis.io.rundir import read_results
    from aegis.report.diff import compare_results, counts, gate

    if fail_on_worse is not None and fail_on_worse < 0:
        raise ConfigError(f"--fail-on-worse must be >= 0, got {fail_on_worse}")
    try:
        pattern = None if only is None else re.compile(only)
    except re.error as exc:
        raise ConfigError(f"--only is not a valid regular expression ({exc})") from exc
    diff = compare_results(read_results(run_a), read_results(run_b))
    if pattern is not None:
        diff["rows"] = [r for r in diff["rows"] if pattern.search(r["path"])]
        diff["counts"] = counts(diff["rows"])
    for key, pair in diff["setup_differences"].items():
        typer.echo(f"warning: the runs differ in {key}: {pair['a']!r} vs {pair['b']!r}")
    order = {"worse": 0, "better": 1, "changed": 2, "same": 3}
    shown = [r for r in diff["rows"] if show_same or r["change"] != "same"]
    shown.sort(key=lambda r: (order[r["change"]], r["path"]))
    grid = Table(title=f"{run_a} → {run_b}")
    for head in ("figure", "A", "B", "change", ""):
        grid.add_column(head, justify="left" if head in ("figure", "") else "right")
    style = {"worse": "bold red", "better": "green", "changed": "yellow", "same": "dim"}
    for r in shown:
        grid.add_row(
            r["path"],
            f"{r['a']:.4g}",
            f"{r['b']:.4g}",
            f"{r['delta']:+.4g}",
            f"[{style[r['change']]}]{r['change']}[/]",
        )
    Console(width=max(Console().width, 100)).print(grid)
    c = diff["counts"]
    typer.echo(
        f"{c['worse']} worse, {c['better']} better, {c['changed']} changed (not judged), "
        f"{c['same']} the same; {len(diff['only_in_a'])} figures only in A, "
        f"{len(diff['only_in_b'])} only in B"
    )
    if json_out is not None:
        json_out.write_text(json.dumps(diff, indent=2))
    if fail_on_worse is not None:
        failed = gate(diff, fail_on_worse)
        if failed:
            worst = max(failed, key=lambda r: abs(r["delta"]))
            typer.echo(
                f"gate FAILED: {len(failed)} figures worse by more than {fail_on_worse:g} "
                f"(largest: {worst['path']} {worst['a']:.4g} → {worst['b']:.4g})"
            )
            raise typer.Exit(EXIT_GATE)
        typer.echo(f"gate passed: no judged figure worse by more than {fail_on_worse:g}")
