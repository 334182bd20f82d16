"""The page of the HTML report: its style, the helpers that write values, and ``Page``, which
collects the sections of one results dict and marks up every number it shows.

Each key number sits in an element with ``data-key`` (its dotted path in ``results.json``, list
items by position), ``data-value`` (the JSON value) and ``data-format`` (how the text shows it),
so a test can check the page against the file. Sections a renderer does not draw itself are shown
as tables of their fields (``Page.rest``).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from typing import Any

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
        cleared |= set(self.get("metrics.verdict.moot", []) or [])
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


def model_line(page: Page) -> str:
    """The subtitle of a run on one model: model, data and creation time."""
    model = page.get("model.source") or page.get("model.name")
    return f"model {model} · data {page.get('data.name')} · {page.get('created', '')}"
