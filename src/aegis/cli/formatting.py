"""How the commands print figures: shares, numbers and where a run's files are."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"


def fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3g}"


def run_files(out_dir: str | Path) -> str:
    """The line that tells where a run's results and report are."""
    return f"results: {Path(out_dir) / 'results.json'}  report: {Path(out_dir) / 'report.html'}"


def share(v: float | None) -> str:
    """A share as the leakage tables show it: 12.3%, – when there is none."""
    return "–" if v is None else f"{100 * v:.1f}%"


def wide_console() -> Any:
    """A rich console at least 110 columns wide, for the leakage tables."""
    from rich.console import Console

    return Console(width=max(Console().width, 110))
