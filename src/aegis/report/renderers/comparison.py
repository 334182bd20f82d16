"""The report of a defense comparison (``kind: defense-comparison``): one row per model."""

from __future__ import annotations

from typing import Any

from aegis.report.page import Page, esc
from aegis.report.svg import bar_chart

_SUSPICIOUS_MARK = '<b class="flag-up">SUSPICIOUS</b>: '


def _verdict(page: Page, rows: list[dict[str, Any]], cfg: dict[str, Any]) -> None:
    suspicious = [r.get("name") for r in rows if r.get("suspicious")]
    if suspicious:
        page.verdict(
            "SUSPICIOUS",
            "suspicious",
            f"SUSPICIOUS rows (sanity checks raised): {', '.join(map(str, suspicious))}; their "
            "accuracy under attack is unreliable until an adaptive attack confirms it. Accuracy "
            "under attack is an upper bound on robust accuracy, not a guarantee.",
        )
    else:
        page.verdict(
            "COMPARED",
            "info",
            f"{len(rows)} models compared under {cfg.get('attack')} {cfg.get('norm')} "
            f"ε={cfg.get('eps')} on the same inputs; accuracy under attack is an upper bound on "
            "robust accuracy, not a guarantee; certified accuracy is a guarantee at an L2 radius.",
        )


def render_comparison(page: Page) -> str:
    rows = page.get("rows", []) or []
    cfg = page.get("config", {}) or {}
    _verdict(page, rows, cfg)
    page.shown.add("rows")
    cols = [
        ("clean_accuracy", "clean", "pct"),
        ("clean_macro_precision", "P", "pct"),
        ("clean_macro_recall", "R", "pct"),
        ("clean_macro_f1", "F1", "pct"),
        ("adversarial_accuracy", "under attack", "pct"),
        ("naive_adversarial_accuracy", "naive (misleading)", "pct"),
        ("detection_auc", "detection AUC", "num"),
        ("train_seconds", "train", "sec"),
        ("seconds", "eval", "sec"),
    ]
    head = "".join(f'<th class="r">{esc(label)}</th>' for _, label, _ in cols)
    body = []
    for i, r in enumerate(rows):
        cert = r.get("certified_accuracy")
        cert_html = (
            ", ".join(
                f"{page.num(f'rows.{i}.certified_accuracy.{k}', 'pct')} @ {esc(k)}" for k in cert
            )
            if isinstance(cert, dict)
            else "—"
        )
        flags = ", ".join(map(str, r.get("suspicious") or []))
        body.append(
            f'<tr class="{"flagged" if flags else ""}"><td>{esc(r.get("name"))}</td><td>'
            f"{esc(r.get('kind'))}</td>"
            + "".join(f'<td class="r">{page.num(f"rows.{i}.{k}", fmt)}</td>' for k, _, fmt in cols)
            + f"<td>{cert_html}</td><td>{_SUSPICIOUS_MARK + esc(flags) if flags else ''}</td></tr>"
        )
    chart = bar_chart(
        [str(r.get("name", "")) for r in rows],
        [
            ("clean accuracy", "#2f6db5", [r.get("clean_accuracy") for r in rows]),
            ("under attack", "#b3261e", [r.get("adversarial_accuracy") for r in rows]),
        ],
        ylabel="accuracy",
        width=min(1100, 160 + 150 * len(rows)),
    )
    page.add(
        "Defense comparison",
        chart
        + "<table><thead><tr><th>model</th><th>kind</th>"
        + head
        + "<th>certified (L2 radius)</th><th>flags</th></tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table><details><summary>every field of every row</summary>"
        + page.tree(rows, "rows")
        + "</details>",
        "comparison",
    )
    page.rest()
    page.provenance()
    return page.html(
        "aegis report · defense comparison",
        f"base {cfg.get('base')} · data {cfg.get('data')} · {page.get('created', '')}",
    )
