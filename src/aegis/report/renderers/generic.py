"""The report of any other kind (poisoning, extraction, membership, audit, …): its verdict or
sanity flags if it has them, then every section as tables, so new kinds appear without code
changes."""

from __future__ import annotations

from aegis.report.page import Page


def render_generic(page: Page) -> str:
    """Any other kind: its verdict or sanity flags if it has them, then every section."""
    kind = str(page.get("kind", "results"))
    v = page.get("verdict") or page.get("metrics.verdict")
    text = str(v.get("text", "")) if isinstance(v, dict) else (str(v) if v else "")
    if page.flagged() or (isinstance(v, dict) and v.get("suspicious")):
        page.verdict(
            "SUSPICIOUS",
            "suspicious",
            ("SUSPICIOUS: " + text) if text else "SUSPICIOUS: sanity checks raised",
            page.evidence(),
        )
    else:
        page.verdict(
            kind.upper(),
            "info",
            text or f"{kind} results; every section below is read from results.json.",
        )
    page.shown.add("verdict")
    page.sanity()
    page.rest()
    page.provenance()
    return page.html(f"aegis report · {kind}", f"{page.get('created', '')}")
