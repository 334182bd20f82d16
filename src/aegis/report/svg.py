"""The report's charts, drawn as inline SVG: line charts (curves), grouped bar charts and
histograms. Each returns one ``<svg>`` element as text (or a short note when nothing is finite)."""

from __future__ import annotations

import math

from aegis.report.page import esc, format_value


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 12))
        t += step
    return ticks


def line_chart(
    series: list[tuple[str, str, list[tuple[float, float]]]],
    *,
    xlabel: str,
    ylabel: str,
    percent: bool = True,
    width: int = 460,
    height: int = 280,
) -> str:
    """Lines of (x, y) points; ``series`` holds (name, colour, points)."""
    pts = [p for _, _, ps in series for p in ps if math.isfinite(p[0]) and math.isfinite(p[1])]
    if not pts:
        return '<p class="sub">no finite points to draw</p>'
    left, right, top, bottom = 52, 14, 14, 40
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    y0, y1 = (0.0, 1.0) if percent else (min(0.0, min(p[1] for p in pts)), max(p[1] for p in pts))
    if y1 == y0:
        y1 = y0 + 1

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * (width - left - right)

    def sy(v: float) -> float:
        return height - bottom - (v - y0) / (y1 - y0) * (height - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for t in nice_ticks(y0, y1):
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" '
            'stroke="#e4e7ec"/>'
            f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">'
            f"{esc(f'{t:.0%}' if percent else f'{t:g}')}</text>"
        )
    for t in nice_ticks(x0, x1):
        out.append(
            f'<text x="{sx(t):.1f}" y="{height - bottom + 15}" text-anchor="middle">{t:g}</text>'
        )
    out.append(
        f'<line x1="{left}" x2="{width - right}" y1="{height - bottom}" y2="{height - bottom}" '
        f'stroke="#555"/><line x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}" '
        'stroke="#555"/>'
        f'<text x="{(left + width - right) / 2:.0f}" y="{height - 6}" text-anchor="middle">'
        f"{esc(xlabel)}</text>"
        f'<text transform="translate(13 {(top + height - bottom) / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">{esc(ylabel)}</text>'
    )
    for i, (name, colour, ps) in enumerate(series):
        good = [p for p in ps if math.isfinite(p[0]) and math.isfinite(p[1])]
        path = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in good)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        if len(good) <= 30:
            out += [
                f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="3" fill="{colour}">'
                f"<title>{esc(name)}: {a:g} → {esc(format_value(b, 'pct' if percent else 'num'))}"
                "</title></circle>"
                for a, b in good
            ]
        if len(series) > 1:
            ly = top + 4 + 14 * i
            out.append(
                f'<rect x="{width - right - 130}" y="{ly}" width="10" height="10" '
                f'fill="{colour}"/><text x="{width - right - 115}" y="{ly + 9}">{esc(name)}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def bar_chart(
    labels: list[str],
    series: list[tuple[str, str, list[float | None]]],
    *,
    ylabel: str,
    width: int = 560,
    height: int = 260,
) -> str:
    """Grouped vertical bars of shares in [0, 1]; ``series`` holds (name, colour, values)."""
    if not labels:
        return ""
    left, right, top, bottom = 52, 14, 22, 56
    group = (width - left - right) / len(labels)
    bar = group * 0.8 / max(len(series), 1)

    def sy(v: float) -> float:
        return height - bottom - v * (height - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" '
            f'stroke="#e4e7ec"/><text x="{left - 6}" y="{sy(t) + 4:.1f}" '
            f'text-anchor="end">{t:.0%}</text>'
        )
    for g, label in enumerate(labels):
        gx = left + g * group + group * 0.1
        for s, (name, colour, values) in enumerate(series):
            v = values[g]
            if v is None or not math.isfinite(v):
                continue
            out.append(
                f'<rect x="{gx + s * bar:.1f}" y="{sy(v):.1f}" width="{bar * 0.92:.1f}" '
                f'height="{sy(0) - sy(v):.1f}" fill="{colour}"><title>{esc(label)} · '
                f"{esc(name)}: {esc(format_value(v, 'pct'))}</title></rect>"
            )
        short = label if len(label) <= 14 else label[:13] + "…"
        out.append(
            f'<text x="{left + (g + 0.5) * group:.1f}" y="{height - bottom + 14}" '
            f'text-anchor="middle">{esc(short)}</text>'
        )
    for s, (name, colour, _) in enumerate(series):
        lx = left + 10 + s * 150
        out.append(
            f'<rect x="{lx}" y="{height - 18}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{lx + 14}" y="{height - 9}">{esc(name)}</text>'
        )
    out.append(
        f'<text transform="translate(13 {(top + height - bottom) / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">{esc(ylabel)}</text></svg>'
    )
    return "".join(out)


def histogram(values: list[float], *, xlabel: str, bins: int = 20, width: int = 460) -> str:
    """Counts of ``values`` in ``bins`` equal bins, with the median as a dashed line."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return '<p class="sub">no finite values to draw</p>'
    height, left, right, top, bottom = 240, 44, 14, 14, 40
    lo, hi = finite[0], finite[-1]
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts = [0] * bins
    for v in finite:
        counts[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
    peak = max(counts)
    inner = width - left - right

    def sx(v: float) -> float:
        return left + (v - lo) / (hi - lo) * inner

    def sy(c: float) -> float:
        return height - bottom - c / peak * (height - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for b, c in enumerate(counts):
        x = left + b * inner / bins
        out.append(
            f'<rect x="{x:.1f}" y="{sy(c):.1f}" width="{inner / bins * 0.95:.1f}" '
            f'height="{sy(0) - sy(c):.1f}" fill="#d9822b"><title>{c}</title></rect>'
        )
    n = len(finite)
    median = (finite[(n - 1) // 2] + finite[n // 2]) / 2
    out.append(
        f'<line x1="{sx(median):.1f}" x2="{sx(median):.1f}" y1="{top}" y2="{height - bottom}" '
        'stroke="#000" stroke-dasharray="4 3"/>'
    )
    for t in nice_ticks(lo, hi):
        out.append(
            f'<text x="{sx(t):.1f}" y="{height - bottom + 15}" text-anchor="middle">{t:g}</text>'
        )
    for t in nice_ticks(0, peak, 4):
        if t == int(t):
            out.append(
                f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{int(t)}</text>'
            )
    out.append(
        f'<line x1="{left}" x2="{width - right}" y1="{height - bottom}" y2="{height - bottom}" '
        f'stroke="#555"/><text x="{(left + width - right) / 2:.0f}" y="{height - 6}" '
        f'text-anchor="middle">{esc(xlabel)}</text>'
        f'<text transform="translate(12 {(top + height - bottom) / 2:.0f}) rotate(-90)" '
        'text-anchor="middle">inputs</text></svg>'
    )
    return "".join(out)
