"""The report of a randomized-smoothing certification (``kind: certification``)."""

from __future__ import annotations

from aegis.report.page import Page, format_value, model_line
from aegis.report.svg import histogram, line_chart


def render_certification(page: Page) -> str:
    c = "certification"
    points = page.get(f"{c}.certified_accuracy", []) or []
    sigma = page.get("config.smoothing.sigma")
    page.verdict(
        "CERTIFIED",
        "info",
        f"randomized smoothing σ={sigma}: certified L2 accuracy holds with probability 1 − α "
        "(a guarantee for the smoothed classifier at each radius, not an attack's upper bound).",
        '<div class="tiles">'
        + "".join(
            page.tile(
                f"certified at L2 radius {format_value(p.get('radius'), 'num')}",
                f"{c}.certified_accuracy.{i}.accuracy",
            )
            for i, p in enumerate(points)
        )
        + page.tile("abstain rate", f"{c}.abstain_rate")
        + page.tile("smoothed accuracy", f"{c}.accuracy")
        + "</div>",
    )
    page.shown.update((c, "certificates", "files", "seconds"))
    chart_points = [
        (float(p["radius"]), float(p["accuracy"])) for p in points if p.get("accuracy") is not None
    ]
    radius = page.get("certificates.radius", []) or []
    correct = page.get("certificates.correct", []) or []
    radii = [float(r) for r, ok in zip(radius, correct, strict=False) if ok]
    rows = "".join(
        f'<tr><td class="r">{page.num(f"{c}.certified_accuracy.{i}.radius")}</td>'
        f'<td class="r">{page.num(f"{c}.certified_accuracy.{i}.accuracy", "pct")}</td></tr>'
        for i in range(len(points))
    )
    body = (
        '<div class="charts"><div>'
        + line_chart(
            [("certified accuracy", "#1e7d32", chart_points)],
            xlabel="L2 radius",
            ylabel="certified accuracy",
        )
        + "</div><div>"
        + histogram(radii, xlabel="certified L2 radius of the correct inputs")
        + "</div></div>"
        '<table><thead><tr><th class="r">L2 radius</th><th class="r">certified accuracy</th></tr>'
        "</thead>"
        f"<tbody>{rows}</tbody></table>"
        f"<p>{page.num(f'{c}.n', 'int')} inputs; median certified radius of the correct ones "
        f"{page.num(f'{c}.median_radius_correct')}; largest certifiable radius with these n and α "
        f"{page.num('config.max_certifiable_radius')}; {page.num(f'{c}.seconds', 'sec')}.</p>"
    )
    page.add("Certification", body, "certification")
    page.sanity()
    page.rest()
    page.provenance()
    return page.html(
        f"aegis report · randomized smoothing σ={sigma}",
        model_line(page),
    )
