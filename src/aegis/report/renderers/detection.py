"""The report of a detector's evaluation (``kind: detection``)."""

from __future__ import annotations

from aegis.report.page import Page, format_value, model_line


def render_detection(page: Page) -> str:
    d = "detection"
    det = page.get(d, {}) or {}
    worst = (
        f"{d}.worst_case.robust_accuracy"
        if page.has(f"{d}.worst_case.robust_accuracy")
        else f"{d}.non_adaptive.combined.robust_accuracy"
    )
    page.verdict(
        "MEASURED",
        "info",
        f"{det.get('detector')} detector against {(det.get('attack') or {}).get('name')}: the "
        "combined robust accuracy is an upper bound, not a guarantee; a stronger adaptive attack "
        "can only lower it.",
        '<div class="tiles">'
        + page.tile("ROC-AUC, non-adaptive", f"{d}.non_adaptive.roc_auc", "num")
        + page.tile(
            f"detection rate at {format_value(det.get('fpr'), 'pct')} FPR", f"{d}.non_adaptive.tpr"
        )
        + page.tile("clean inputs flagged", f"{d}.clean_flagged")
        + page.tile("combined clean accuracy", f"{d}.non_adaptive.combined.clean_accuracy")
        + page.tile("combined robust accuracy, worst case", worst)
        + "</div>",
    )
    page.shown.add(d)
    rows = []
    for mode in ("non_adaptive", "adaptive"):
        if not page.has(f"{d}.{mode}"):
            continue
        p = f"{d}.{mode}"
        rows.append(
            f"<tr><td>{mode.replace('_', '-')}</td>"
            f'<td class="r">{page.num(f"{p}.roc_auc")}</td><td class="r">'
            f"{page.num(f'{p}.tpr', 'pct')}</td>"
            f'<td class="r">{page.num(f"{p}.fpr", "pct")}</td>'
            f'<td class="r">{page.num(f"{p}.successful", "int")} / '
            f"{page.num(f'{p}.attacked', 'int')}</td>"
            f'<td class="r">{page.num(f"{p}.combined.classifier_robust_accuracy", "pct")}</td>'
            f'<td class="r">{page.num(f"{p}.combined.robust_accuracy", "pct")}</td></tr>'
        )
    body = (
        f"<p>Threshold {page.num(f'{d}.threshold')} (chosen for {page.num(f'{d}.fpr', 'pct')} "
        f"false "
        f"positives on clean inputs) on {page.num(f'{d}.n', 'int')} inputs.</p>"
        '<table><thead><tr><th>attack</th><th class="r">ROC-AUC</th><th class="r">detection '
        "rate</th>"
        '<th class="r">FPR</th><th class="r">successful / attacked</th>'
        '<th class="r">classifier alone, under attack</th><th class="r">classifier + detector</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "<details><summary>every field</summary>" + page.tree(det, d) + "</details>"
    )
    page.add("Detection", body, "detection")
    page.sanity()
    page.shown.update(("files", "seconds"))
    page.rest()
    page.provenance()
    return page.html(
        f"aegis report · {det.get('detector')} detector",
        model_line(page),
    )
