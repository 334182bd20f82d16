"""The HTML report of a run, built from ``results.json`` alone (``aegis report RUN_DIR``).

One self-contained page: inline CSS, charts as inline SVG, the gallery's images as data URIs; no
script, style sheet, font or image is fetched from anywhere, so the page reads offline. Every
number on it is read from the results (``aegis.report.page``).

Each ``kind`` of results has a renderer in ``aegis.report.renderers`` (an attack run has no
``kind``; ``defense-comparison``, ``detection``, ``certification``); every other kind, and every
section a renderer does not draw itself, is shown as tables of its fields, so new kinds appear
without code changes. This module picks the renderer and writes the page.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aegis.atomic import atomic
from aegis.errors import AegisError
from aegis.report.page import Page, esc, format_value, lookup
from aegis.report.renderers.attack import render_attack
from aegis.report.renderers.certification import render_certification
from aegis.report.renderers.comparison import render_comparison
from aegis.report.renderers.detection import render_detection
from aegis.report.renderers.generic import render_generic
from aegis.report.svg import bar_chart, histogram, line_chart

__all__ = [
    "RENDERERS",
    "REPORT",
    "Page",
    "bar_chart",
    "esc",
    "format_value",
    "histogram",
    "line_chart",
    "lookup",
    "render_report",
    "write_html",
    "write_report",
]

REPORT = "report.html"


RENDERERS: dict[str | None, Callable[[Page], str]] = {
    None: render_attack,
    "defense-comparison": render_comparison,
    "detection": render_detection,
    "certification": render_certification,
}


def render_report(results: dict[str, Any]) -> str:
    """The report of one results dict (as read from ``results.json``), as an HTML page."""
    return RENDERERS.get(results.get("kind"), render_generic)(Page(results))


def write_html(path: Path, text: str) -> Path:
    with atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_report(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """Render ``RUN_DIR/results.json`` into ``report.html`` beside it (or ``out``)."""
    from aegis.io import rundir

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise AegisError(f"{run_dir} does not exist; point to a run directory written by aegis")
    results = rundir.read_results(run_dir)
    base = run_dir if run_dir.is_dir() else run_dir.parent
    return write_html(Path(out) if out is not None else base / REPORT, render_report(results))
