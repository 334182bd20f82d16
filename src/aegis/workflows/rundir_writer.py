"""The last step of every workflow: write the run directory's ``report.html`` (rendered from the
results exactly as ``results.json`` will hold them), then ``results.json`` last, so a directory
with a ``results.json`` is a complete result. ``aegis.io.rundir`` does the file I/O; rendering
the report belongs here, above both ``io`` and ``report``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aegis.io import rundir


def finish_run(out_dir: Path, results: dict[str, Any]) -> None:
    """Write ``report.html`` (rendered from the results exactly as ``results.json`` will hold
    them), then ``results.json`` last."""
    from aegis.report.html import REPORT, render_report, write_html

    results.setdefault("files", {})["report"] = REPORT
    stored = json.loads(json.dumps(results, default=rundir.json_default, allow_nan=True))
    try:
        page = render_report(stored)
    except Exception:
        rundir.write_json(out_dir / "results.json", results)  # never lose a finished evaluation
        raise
    write_html(out_dir / REPORT, page)
    rundir.write_json(out_dir / "results.json", results)


def write_results(out: Path | str, results: dict[str, Any]) -> dict[str, Any]:
    """Write ``results`` as ``out/results.json`` with its ``report.html`` (creating ``out``) and
    record ``out_dir`` in the returned results."""
    out_dir = rundir.prepare(Path(out))
    finish_run(out_dir, results)
    results["out_dir"] = str(out_dir)
    return results
