"""The HTML report of a run, built from ``results.json`` alone (``aegis report RUN_DIR``).

One self-contained page: inline CSS, charts as inline SVG drawn here, the gallery's images as
data URIs; no script, style sheet, font or image is fetched from anywhere, so the page reads
offline. Every number on it is read from the results: each key number sits in an element with
``data-key`` (its dotted path in ``results.json``, list items by position), ``data-value``
(the JSON value) and ``data-format`` (how the text shows it), so a test can check the page
against the file.

Each ``kind`` of results has a renderer (an attack run has no ``kind``; ``defense-comparison``,
``detection``, ``certification``); every other kind, and every section a renderer does not
draw itself, is shown as tables of its fields, so new kinds appear without code changes.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aegis.atomic import atomic
from aegis.errors import AegisError

REPORT = "report.html"

HEADER_KEYS = ("schema", "kind", "created", "command", "versions", "seed")
"""Fields of ``rundir.header``: shown under provenance."""

PROVENANCE_KEYS = ("model", "data", "config")
"""Sections shown under provenance, after the results."""

LONG_LIST = 24
"""Lists of numbers longer than this are shown as a count and a range, not item by item."""

_ERROR_HOOK = """(function () {
  var box = document.getElementById("aegis-errors");
  function add(m) { box.textContent += m + "\\n"; box.hidden = false; }
  window.addEventListener("error", function (e) {
    var t = e.target && e.target !== window ? (e.target.tagName || "element") : "";
    add("error: " + (e.message || (t + " failed to load")));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { add("rejection: " + e.reason); });
  var original = console.error;
  console.error = function () {
    add("console.error: " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
  document.documentElement.setAttribute("data-js", "ok");
})();"""

_CSS = """
:root { --ink:#1d2430; --muted:#5b6575; --line:#d9dee6; --bg:#f6f7f9; --card:#fff;
  --bad:#b3261e; --good:#1e7d32; --warn:#9a5b00; --blue:#2f6db5; --orange:#d9822b; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--ink); background:var(--bg); }
main { max-width:1180px; margin:0 auto; padding:20px 24px 48px; }
h1 { font-size:22px; margin:0 0 4px; } h2 { font-size:17px; margin:0 0 10px; }
h3 { font-size:14px; margin:14px 0 6px; color:var(--muted); }
section { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:14px 18px; margin:14px 0; }
.sub { color:var(--muted); }
table { border-collapse:collapse; margin:4px 0 8px; }
th, td { border-bottom:1px solid var(--line); padding:3px 9px; text-align:left;
  vertical-align:top; }
th { background:#eef1f5; font-weight:600; }
td.r, th.r { text-align:right; font-variant-numeric:tabular-nums; }
table.kv > tbody > tr > th { background:none; color:var(--muted); font-weight:500;
  white-space:nowrap; }
.badge { display:inline-block; font-weight:700; letter-spacing:.04em; padding:4px 12px;
  border-radius:4px; color:#fff; background:var(--muted); font-size:15px; }
.badge.suspicious { background:var(--bad); } .badge.succeeds { background:var(--warn); }
.badge.fails { background:var(--good); } .badge.info { background:var(--blue); }
.verdict { font-size:15px; margin:10px 0 4px; }
.tiles { display:flex; flex-wrap:wrap; gap:10px; margin-top:10px; }
.tile { border:1px solid var(--line); border-radius:6px; padding:8px 12px; min-width:150px; }
.tile .v { font-size:22px; font-weight:650; } .tile .l { color:var(--muted); font-size:12px; }
.flag-up { color:var(--bad); font-weight:700; } .flag-ok { color:var(--good); }
tr.flagged td { background:#fdecea; }
.gallery { display:flex; flex-wrap:wrap; gap:12px; }
.example { border:1px solid var(--line); border-radius:6px; padding:8px; width:268px; }
.example .imgs { display:flex; gap:4px; }
.example figure { margin:0; text-align:center; font-size:11px; color:var(--muted); }
.example img { width:84px; height:84px; image-rendering:pixelated; image-rendering:crisp-edges;
  border:1px solid var(--line); background:#000; }
.example .lab { font-size:12px; margin-top:4px; }
.fooled { color:var(--bad); font-weight:600; } .held { color:var(--good); font-weight:600; }
.cm td { text-align:right; min-width:30px; font-variant-numeric:tabular-nums; }
.cms { display:flex; flex-wrap:wrap; gap:28px; }
.charts { display:flex; flex-wrap:wrap; gap:24px; align-items:flex-start; }
svg text { font:11px system-ui,sans-serif; fill:var(--ink); }
code, .mono { font-family:ui-monospace,Menlo,Consolas,monospace; font-size:12px; }
details > summary { cursor:pointer; color:var(--blue); }
#aegis-errors { color:var(--bad); background:#fdecea; padding:8px; }
footer { color:var(--muted); font-size:12px; margin-top:24px; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def lookup(results: dict[str, Any], key: str) -> Any:
    """The value at a dotted path (list items by position) in the results. A dict key that
    itself holds dots (``"0.5"``, a radius) is matched by joining parts, shortest first."""
    node: Any = results
    parts = key.split(".")
    i = 0
    while i < len(parts):
        if isinstance(node, list):
            node = node[int(parts[i])]
            i += 1
            continue
        if not isinstance(node, dict):
            raise KeyError(key)
        for j in range(i + 1, len(parts) + 1):
            name = ".".join(parts[i:j])
            if name in node:
                node = node[name]
                i = j
                break
        else:
            raise KeyError(key)
    return node


def format_value(value: Any, fmt: str) -> str:
    """How the report writes a number: ``pct`` (98.0%), ``num`` (4 significant digits),
    ``int``, ``sec`` (1.2 s); None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if fmt == "pct":
        return f"{v:.1%}"
    if fmt == "int":
        return f"{int(v)}"
    if fmt == "sec":
        return f"{v:.1f} s"
    return f"{v:.4g}"


def _json_value(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


class Page:
    """Builds the report of one results dict: every number goes through ``num``."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.r = results
        self.parts: list[str] = []
        self.shown: set[str] = set()

    # -- numbers and values --------------------------------------------------------------

    def has(self, key: str) -> bool:
        try:
            lookup(self.r, key)
        except (KeyError, IndexError, ValueError):
            return False
        return True

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return lookup(self.r, key)
        except (KeyError, IndexError, ValueError):
            return default

    def num(self, key: str, fmt: str = "num") -> str:
        """The value at ``key`` as a marked-up number (an em dash when missing)."""
        if not self.has(key):
            return "—"
        value = lookup(self.r, key)
        if isinstance(value, (dict, list)):
            return self.tree(value, key)
        return (
            f'<span class="num" data-key="{esc(key)}" data-format="{fmt}" '
            f'data-value="{esc(_json_value(value))}">{esc(format_value(value, fmt))}</span>'
        )

    def tile(self, label: str, key: str, fmt: str = "pct") -> str:
        return (
            f'<div class="tile"><div class="v">{self.num(key, fmt)}</div>'
            f'<div class="l">{esc(label)}</div></div>'
        )

    def add(self, title: str, body: str, anchor: str = "") -> None:
        ident = f' id="{esc(anchor)}"' if anchor else ""
        self.parts.append(f"<section{ident}><h2>{esc(title)}</h2>{body}</section>")

    # -- generic tables of any value -----------------------------------------------------

    def tree(self, value: Any, key: str) -> str:
        """Any JSON value as HTML: dicts as key/value tables, lists of dicts as tables, short
        lists of numbers item by item, long ones as their count and range."""
        if isinstance(value, dict):
            if not value:
                return '<span class="sub">(empty)</span>'
            rows = "".join(
                f"<tr><th>{esc(k)}</th><td>{self.tree(v, f'{key}.{k}' if key else str(k))}</td>"
                f"</tr>"
                for k, v in value.items()
            )
            return f'<table class="kv"><tbody>{rows}</tbody></table>'
        if isinstance(value, list):
            return self._list(value, key)
        if isinstance(value, bool) or value is None:
            return esc(format_value(value, "num"))
        if isinstance(value, (int, float)):
            return self.num(key, "int" if isinstance(value, int) else "num")
        return f'<span class="mono">{esc(value)}</span>'

    def _list(self, value: list[Any], key: str) -> str:
        if not value:
            return '<span class="sub">(none)</span>'
        if all(isinstance(v, dict) for v in value):
            columns: list[str] = []
            for item in value:
                columns += [c for c in item if c not in columns]
            head = "".join(f"<th>{esc(c)}</th>" for c in columns)
            body = "".join(
                "<tr>"
                + "".join(
                    f"<td>{self.tree(item[c], f'{key}.{i}.{c}') if c in item else ''}</td>"
                    for c in columns
                )
                + "</tr>"
                for i, item in enumerate(value)
            )
            return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if numbers and len(value) > LONG_LIST:
            finite = [float(v) for v in value if math.isfinite(float(v))]
            span = (
                f", from {format_value(min(finite), 'num')} to {format_value(max(finite), 'num')}"
                if finite
                else ""
            )
            return f'<span class="sub">{len(value)} values{esc(span)} (in results.json)</span>'
        if len(value) > LONG_LIST and all(isinstance(v, bool) for v in value):
            return (
                f'<span class="sub">{len(value)} flags, {sum(value)} true (in results.json)</span>'
            )
        return ", ".join(self.tree(v, f"{key}.{i}") for i, v in enumerate(value))

    # -- shared sections -----------------------------------------------------------------

    def verdict(self, badge: str, css: str, text: str, extra: str = "") -> None:
        self.parts.append(
            f'<section id="verdict"><h2>Verdict</h2><span class="badge {css}" '
            f'id="verdict-badge">{esc(badge)}</span><p class="verdict" id="verdict-text">'
            f"{esc(text)}</p>{extra}</section>"
        )

    def flagged(self, remedied: bool = False) -> list[dict[str, Any]]:
        """The raised sanity flags still standing (``remedied``: those a remedy cleared)."""
        cleared = set(self.get("metrics.verdict.remedied", []) or [])
        return [
            f
            for f in self.get("sanity", []) or []
            if isinstance(f, dict) and f.get("flagged") and (f.get("name") in cleared) == remedied
        ]

    def evidence(self) -> str:
        """The raised sanity flags with their evidence, and those a remedy cleared, with the
        figures before and after it, for the verdict."""
        out = ""
        up = self.flagged()
        if up:
            items = "".join(
                f"<li><b>{esc(f.get('name'))}</b>: {esc(f.get('evidence', ''))}"
                f'<br><span class="sub">{esc(f.get("advice", ""))}</span></li>'
                for f in up
            )
            out += f'<h3>Warning signs of a broken evaluation</h3><ul id="evidence">{items}</ul>'
        fixed = self.flagged(remedied=True)
        if fixed:
            what = "; ".join(str(w) for w in self.get("remedies.what", []) or [])
            before = self.num("remedies.naive_adversarial_accuracy", "pct")
            after = self.num("remedies.remedied_adversarial_accuracy", "pct")
            items = "".join(
                f"<li><b>{esc(f.get('name'))}</b>: {esc(f.get('evidence', ''))}</li>" for f in fixed
            )
            out += (
                f'<h3>Remedied</h3><ul id="remedied">{items}</ul><p class="sub">{esc(what)}: '
                f"accuracy under attack {before} without the remedy, {after} with it.</p>"
            )
        return out

    def sanity(self) -> None:
        flags = self.get("sanity")
        if not isinstance(flags, list) or not flags:
            return
        self.shown.add("sanity")
        rows = []
        for i, f in enumerate(flags):
            up = bool(f.get("flagged"))
            mark = (
                '<span class="flag-up">RAISED</span>' if up else '<span class="flag-ok">ok</span>'
            )
            rows.append(
                f'<tr class="{"flagged" if up else ""}" data-key="sanity.{i}.flagged" '
                f'data-value="{esc(_json_value(up))}"><td><b>{esc(f.get("name"))}</b></td>'
                f"<td>{mark}</td><td>{esc(f.get('evidence', ''))}</td>"
                f'<td class="sub">{esc(f.get("advice", "")) if up else ""}</td></tr>'
            )
        self.add(
            "Sanity checks",
            '<p class="sub">The warning signs of gradient masking (Athalye et al. 2018; '
            "Carlini et al. 2019). Any raised check makes the evaluation SUSPICIOUS.</p>"
            "<table><thead><tr><th>check</th><th>status</th><th>evidence</th><th>advice</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>",
            "sanity",
        )

    def rest(self, skip: Sequence[str] = ()) -> None:
        """Every top-level section not drawn yet, as tables (long arrays summarized)."""
        for k, v in self.r.items():
            if k in HEADER_KEYS or k in PROVENANCE_KEYS or k in self.shown or k in skip:
                continue
            self.shown.add(k)
            self.add(k.replace("_", " ").capitalize(), self.tree(v, k), f"section-{k}")

    def provenance(self) -> None:
        rows = "".join(
            f"<tr><th>{esc(k)}</th><td>{self.tree(self.r[k], k)}</td></tr>"
            for k in HEADER_KEYS
            if k in self.r
        )
        body = f'<table class="kv"><tbody>{rows}</tbody></table>'
        for k in PROVENANCE_KEYS:
            if k in self.r and k not in self.shown:
                self.shown.add(k)
                body += f"<h3>{esc(k)}</h3>{self.tree(self.r[k], k)}"
        self.add("Provenance", body, "provenance")

    # -- the page ------------------------------------------------------------------------

    def html(self, title: str, subtitle: str) -> str:
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
            f'<pre id="aegis-errors" hidden></pre><script>{_ERROR_HOOK}</script>'
            f'<main><h1>{esc(title)}</h1><div class="sub">{esc(subtitle)}</div>'
            + "".join(self.parts)
            + "<footer>Written by aegis from results.json; rebuild with <code>aegis report "
            "RUN_DIR</code>. Accuracy under attack is an upper bound on robust accuracy, never "
            "a guarantee.</footer></main></body></html>"
        )


# -- charts (inline SVG) ------------------------------------------------------------------


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
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
    for t in _nice_ticks(y0, y1):
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" '
            'stroke="#e4e7ec"/>'
            f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">'
            f"{esc(f'{t:.0%}' if percent else f'{t:g}')}</text>"
        )
    for t in _nice_ticks(x0, x1):
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
    for t in _nice_ticks(lo, hi):
        out.append(
            f'<text x="{sx(t):.1f}" y="{height - bottom + 15}" text-anchor="middle">{t:g}</text>'
        )
    for t in _nice_ticks(0, peak, 4):
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


# -- renderers per kind -------------------------------------------------------------------


def _attack_title(page: Page) -> tuple[str, str]:
    cfg = page.get("config", {}) or {}
    threat = cfg.get("threat", {}) or {}
    name = (cfg.get("attack") or {}).get("name", "attack")
    eps = threat.get("eps")
    title = f"aegis report · {name} {threat.get('norm', '')} ε={eps}"
    model = page.get("model.source") or page.get("model.name") or "model"
    n = page.get("metrics.n", "?")
    data = page.get("data.name", "?")
    sub = f"model {model} · data {data} ({n} inputs) · {page.get('created', '')}"
    return title, sub


def _attack_verdict(page: Page) -> None:
    v = page.get("metrics.verdict", {}) or {}
    flagged = page.flagged()
    if v.get("suspicious") or flagged:
        badge, css = "SUSPICIOUS", "suspicious"
    elif v.get("reached") is True:
        badge, css = "ATTACK SUCCEEDS", "succeeds"
    elif v.get("reached") is False:
        badge, css = "ATTACK FAILS", "fails"
    else:
        badge, css = "MEASURED", "info"
    text = str(v.get("text", ""))
    if flagged and not text.startswith("SUSPICIOUS"):
        text = "SUSPICIOUS evaluation: " + text
    tiles = (
        '<div class="tiles">'
        + page.tile("clean accuracy", "metrics.clean_accuracy")
        + page.tile("accuracy under attack (upper bound)", "metrics.adversarial_accuracy")
        + page.tile("attack success rate", "metrics.success.rate")
        + page.tile("inputs attacked", "metrics.success.attacked", "int")
        + (
            page.tile("required success rate", "metrics.verdict.threshold")
            if v.get("threshold") is not None
            else ""
        )
        + (
            page.tile(f"median minimal {page.get('minimal.norm')}", "minimal.median", "num")
            if page.has("minimal")
            else ""
        )
        + "</div>"
    )
    page.verdict(badge, css, text, tiles + page.evidence())


def _metrics_table(page: Page) -> None:
    rows = [("accuracy", "metrics.clean_accuracy", "metrics.adversarial_accuracy")]
    rows += [
        (f"macro {k}", f"metrics.clean.macro_{k}", f"metrics.adversarial.macro_{k}")
        for k in ("precision", "recall", "f1")
    ]
    body = "".join(
        f'<tr><td>{esc(label)}</td><td class="r">{page.num(a, "pct")}</td>'
        f'<td class="r">{page.num(b, "pct")}</td></tr>'
        for label, a, b in rows
    )
    s = "metrics.success"
    norms = page.get("metrics.norms", {}) or {}
    nrows = "".join(
        f"<tr><td>{esc(n)}</td>"
        + "".join(
            f'<td class="r">{page.num(f"metrics.norms.{n}.{q}")}</td>'
            for q in ("mean", "median", "max")
        )
        + "</tr>"
        for n in norms
    )
    calls = "metrics.calls"
    html_ = (
        '<table><thead><tr><th>metric</th><th class="r">clean</th><th class="r">under attack</th>'
        f"</tr></thead><tbody>{body}</tbody></table>"
        f"<p>Success rate {page.num(f'{s}.rate', 'pct')}: {page.num(f'{s}.successes', 'int')} of "
        f"{page.num(f'{s}.attacked', 'int')} attacked inputs ({page.num(f'{s}.total', 'int')} in "
        f"all, "
        f"{page.num(f'{s}.clean_correct', 'int')} correctly classified, "
        f"{page.num(f'{s}.excluded_target', 'int')} excluded because their label is the target, "
        f"{page.num(f'{s}.skipped_misclassified', 'int')} misclassified and not attacked).</p>"
        "<h3>Perturbation norms of the successful adversarial examples</h3>"
        '<table><thead><tr><th>norm</th><th class="r">mean</th><th class="r">median</th>'
        f'<th class="r">max</th></tr></thead><tbody>{nrows}</tbody></table>'
        f'<p class="sub">Cost: {page.num(f"{calls}.gradient_total", "int")} gradients, '
        f"{page.num(f'{calls}.forward_total', 'int')} forward queries, "
        f"{page.num('seconds', 'sec')} in all.</p>"
    )
    page.add("Metrics", html_, "metrics")


def _curve(page: Page) -> None:
    norm = page.get("config.threat.norm", "")
    if page.has("minimal"):
        page.shown.add("minimal")
        curve = page.get("minimal.curve", []) or []
        points = [
            (float(p["eps"]), float(p["accuracy"])) for p in curve if p.get("accuracy") is not None
        ]
        rows = "".join(
            f'<tr><td class="r">{page.num(f"minimal.curve.{i}.eps")}</td>'
            f'<td class="r">{page.num(f"minimal.curve.{i}.accuracy", "pct")}</td>'
            f'<td class="r">{page.num(f"minimal.curve.{i}.success", "pct")}</td></tr>'
            for i in range(len(curve))
        )
        rec_norms = page.get(f"records.{page.get('minimal.norm')}", []) or []
        success = page.get("records.success", []) or []
        found = [float(v) for v, ok in zip(rec_norms, success, strict=False) if ok]
        pct = page.get("minimal.percentiles", {}) or {}
        prow = "".join(f'<td class="r">{page.num(f"minimal.percentiles.{k}")}</td>' for k in pct)
        body = (
            '<div class="charts"><div>'
            + line_chart(
                [("accuracy", "#2f6db5", points)],
                xlabel=f"ε ({norm})",
                ylabel="accuracy under attack",
            )
            + "</div><div>"
            + histogram(
                found, xlabel=f"smallest adversarial perturbation ({page.get('minimal.norm')})"
            )
            + "</div></div>"
            f"<p>Minimal {esc(page.get('minimal.norm'))} perturbation found for "
            f"{page.num('minimal.found', 'int')} of {page.num('minimal.attacked', 'int')} attacked "
            f"inputs: median {page.num('minimal.median')}, mean {page.num('minimal.mean')}.</p>"
            "<table><thead><tr>"
            + "".join(f'<th class="r">{esc(k)}</th>' for k in pct)
            + f"</tr></thead><tbody><tr>{prow}</tr></tbody></table>"
            "<details><summary>accuracy-vs-ε points</summary><table><thead><tr>"
            '<th class="r">ε</th><th class="r">accuracy</th><th class="r">success rate</th></tr>'
            f"</thead><tbody>{rows}</tbody></table></details>"
        )
        page.add("Accuracy vs ε and minimal-norm distribution", body, "curve")
        return
    if page.has("sweep"):
        page.shown.add("sweep")
        sweep = page.get("sweep", []) or []
        points = [
            (float(p["eps"]), float(p["metrics"]["adversarial_accuracy"]))
            for p in sweep
            if p["metrics"].get("adversarial_accuracy") is not None
        ]
        rows = "".join(
            f'<tr><td class="r">{page.num(f"sweep.{i}.eps")}</td>'
            f'<td class="r">{page.num(f"sweep.{i}.metrics.adversarial_accuracy", "pct")}</td>'
            f'<td class="r">{page.num(f"sweep.{i}.metrics.success.rate", "pct")}</td>'
            f'<td class="r">{page.num(f"sweep.{i}.metrics.adversarial.macro_f1", "pct")}</td></tr>'
            for i in range(len(sweep))
        )
        body = (
            '<div class="charts"><div>'
            + line_chart(
                [("accuracy under attack", "#2f6db5", points)],
                xlabel=f"ε ({norm})",
                ylabel="accuracy under attack",
            )
            + '</div><div><table><thead><tr><th class="r">ε</th><th class="r">accuracy under '
            "attack</th>"
            '<th class="r">success rate</th><th class="r">macro F1</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></div></div>"
        )
        page.add("Accuracy vs ε", body, "curve")


def _per_class(page: Page) -> None:
    clean = page.get("metrics.clean", {}) or {}
    k = len(clean.get("recall", []) or [])
    if not k:
        return
    rows = "".join(
        f'<tr><td>{c}</td><td class="r">{page.num(f"metrics.clean.support.{c}", "int")}</td>'
        + "".join(
            f'<td class="r">{page.num(f"metrics.{side}.{m}.{c}", "pct")}</td>'
            for m in ("precision", "recall", "f1")
            for side in ("clean", "adversarial")
        )
        + "</tr>"
        for c in range(k)
    )
    head = "".join(
        f'<th class="r">{m} {side}</th>'
        for m in ("precision", "recall", "F1")
        for side in ("clean", "attacked")
    )
    chart = (
        bar_chart(
            [str(c) for c in range(k)],
            [
                ("recall, clean", "#2f6db5", list(clean.get("recall", []))),
                (
                    "recall, under attack",
                    "#b3261e",
                    list(page.get("metrics.adversarial.recall", []) or []),
                ),
            ],
            ylabel="recall",
            width=min(900, 120 + 48 * k),
        )
        if k <= 40
        else ""
    )
    page.add(
        "Per-class precision, recall and F1",
        chart
        + '<table><thead><tr><th>class</th><th class="r">support</th>'
        + head
        + f"</tr></thead><tbody>{rows}</tbody></table>",
        "per-class",
    )


def _matrix(page: Page, key: str, title: str) -> str:
    m = page.get(key)
    if not isinstance(m, list) or not m:
        return ""
    peak = max((max(row) for row in m if row), default=0) or 1
    head = "".join(f"<th>{j}</th>" for j in range(len(m[0])))
    rows = []
    for i, row in enumerate(m):
        cells = []
        for j, c in enumerate(row):
            alpha = c / peak
            colour = "47,109,181" if i == j else "179,38,30"
            ink = "#fff" if alpha > 0.55 else "inherit"
            cells.append(
                f'<td style="background:rgba({colour},{alpha:.3f});color:{ink}">'
                f"{page.num(f'{key}.{i}.{j}', 'int')}</td>"
            )
        rows.append(f"<tr><th>{i}</th>{''.join(cells)}</tr>")
    return (
        f'<div><h3>{esc(title)}</h3><table class="cm"><thead><tr><th>true \\ pred</th>{head}'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _confusion(page: Page) -> None:
    if not page.has("metrics.confusion") or page.get("metrics.confusion") is None:
        return
    body = _matrix(page, "metrics.confusion.clean", "clean") + _matrix(
        page, "metrics.confusion.adversarial", "under attack"
    )
    page.add(
        "Confusion matrices",
        '<p class="sub">Rows: true class; columns: predicted class.</p>'
        f'<div class="cms">{body}</div>',
        "confusion",
    )


def _gallery(page: Page) -> None:
    examples = page.get("gallery.examples")
    if not isinstance(examples, list) or not examples:
        return
    page.shown.add("gallery")
    norm = page.get("config.threat.norm", "linf")
    targeted = bool(page.get("config.threat.targeted"))
    cards = []
    for i, e in enumerate(examples):
        g = f"gallery.examples.{i}"
        fooled = bool(e.get("success"))
        status = (
            '<span class="fooled">fooled</span>'
            if fooled
            else (
                '<span class="held">held</span>'
                if e.get("attacked")
                else '<span class="sub">not attacked</span>'
            )
        )
        imgs = "".join(
            f'<figure><img alt="{esc(label)} {i}" '
            f'src="data:image/png;base64,{esc(e.get(key, ""))}">'
            f"<figcaption>{esc(label)}</figcaption></figure>"
            for key, label in (
                ("original_png", "original"),
                ("perturbation_png", "perturbation"),
                ("adversarial_png", "adversarial"),
            )
            if e.get(key)
        )
        cards.append(
            f'<div class="example"><div class="imgs">{imgs}</div>'
            f'<div class="lab">input #{page.num(f"{g}.index", "int")} · true '
            f"{page.num(f'{g}.y', 'int')}"
            + (f" · target {page.num(f'{g}.target', 'int')}" if targeted else "")
            + f" · {status}</div>"
            f'<div class="lab">clean: {page.num(f"{g}.clean_pred", "int")} '
            f"({page.num(f'{g}.clean_confidence', 'pct')})"
            f" → adv: {page.num(f'{g}.adv_pred', 'int')} "
            f"({page.num(f'{g}.adv_confidence', 'pct')})</div>"
            f'<div class="lab sub">‖δ‖<sub>{esc(norm)}</sub> {page.num(f"{g}.norms.{norm}")} · '
            f"L2 {page.num(f'{g}.norms.l2')} · L0 {page.num(f'{g}.norms.l0', 'int')}</div></div>"
        )
    page.add(
        "Gallery",
        f'<p class="sub">Original, perturbation (amplified '
        f"×{page.num('gallery.perturbation_gain')} "
        "around grey) and adversarial input; confidences are the model's softmax outputs for "
        "the predicted class, computed when the run was made.</p>"
        f'<div class="gallery" id="gallery">{"".join(cards)}</div>',
        "gallery",
    )


def _defense(page: Page) -> None:
    if not page.has("defense"):
        return
    page.shown.add("defense")
    d = page.get("defense", {}) or {}
    body = ""
    if isinstance(d.get("naive"), dict):
        body += (
            "<p><b>Naive (misleading) vs adaptive evaluation.</b> Accuracy under attack, naive: "
            f"{page.num('defense.naive.adversarial_accuracy', 'pct')}; adaptive: "
            f"{page.num('defense.naive.adaptive_adversarial_accuracy', 'pct')}; the naive one "
            f"overestimates by {page.num('defense.naive.overestimate', 'pct')}.</p>"
        )
    body += page.tree(d, "defense")
    page.add("Defense", body, "defense")


def _model_line(page: Page) -> str:
    model = page.get("model.source") or page.get("model.name")
    return f"model {model} · data {page.get('data.name')} · {page.get('created', '')}"


def render_attack(page: Page) -> str:
    title, sub = _attack_title(page)
    _attack_verdict(page)
    page.shown.update(("metrics", "records", "files", "seconds"))
    _metrics_table(page)
    _curve(page)
    _per_class(page)
    _confusion(page)
    _gallery(page)
    page.sanity()
    _defense(page)
    page.rest()
    page.provenance()
    return page.html(title, sub)


_SUSPICIOUS_MARK = '<b class="flag-up">SUSPICIOUS</b>: '


def render_comparison(page: Page) -> str:
    rows = page.get("rows", []) or []
    suspicious = [r.get("name") for r in rows if r.get("suspicious")]
    cfg = page.get("config", {}) or {}
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
        _model_line(page),
    )


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
        _model_line(page),
    )


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
