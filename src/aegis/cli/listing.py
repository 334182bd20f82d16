"""What ``aegis attacks`` and ``aegis datasets`` print, as plain text wrapped to a width.

Pure functions over the registry and the built-in datasets' metadata: they return the text, so
a test checks it without a terminal, and every line fits ``width`` (80 columns by default). The
default layout is one block per attack; ``wide=True`` gives one row per attack for wide
terminals, each row cut to ``width`` (the blocks have everything the rows leave out).

    >>> print(attacks_text(width=shutil.get_terminal_size().columns))
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from typing import Any, TypeVar

from aegis.registry import (
    AliasSpec,
    AttackSpec,
    EnsembleSpec,
    list_aliases,
    list_attacks,
    list_ensembles,
)

INDENT = "  "
GAP = "  "
"""Between the columns of the wide layout."""
WIDE_SUMMARY = 60
"""The room the wide layout keeps for the summaries before it shows the papers too."""
ATTACKS_HEAD = (
    "Attacks ({n}). access: gradients (white-box) or queries only (black-box); minimal-norm "
    "attacks find each point's smallest perturbation (run them with --eps inf). Parameters "
    "are set with -p NAME=VALUE."
)
SUITES_HEAD = "Suites: run in order, each member only on the points the earlier ones failed on."
ALIASES_HEAD = "Aliases: other names for an attack with some settings chosen."

T = TypeVar("T")


def attacks_text(width: int = 80, wide: bool = False, pattern: str = "*") -> str:
    """The attacks, suites and aliases whose names match the shell-style ``pattern``.

    Blocks (default): per attack its name and aliases, the one-line summary, norms, whether
    it takes a target, its access (gradients, or queries only: black-box), whether it is
    minimal-norm, its parameters with their defaults and its paper; then the suites (members
    per norm) and the aliases (what each builds). ``wide``: one row per attack, suite, alias.
    Every line is at most ``width`` (at least 20) characters long.
    """
    width = max(width, 20)
    attacks, suites = list_attacks(pattern), list_ensembles(pattern)
    aliases, every_alias = list_aliases(pattern), list_aliases()
    if not (attacks or suites or aliases):
        no_match = f"No attack, suite or alias matches {pattern!r}; `aegis attacks` lists all."
        return _fill(no_match, width) + "\n"
    if wide:
        parts = [
            *([_attack_rows(attacks, width)] if attacks else []),
            *([_suite_rows(suites, width)] if suites else []),
            *([_alias_rows(aliases, width)] if aliases else []),
        ]
        return "\n\n".join(parts) + "\n"

    def named_block(spec: AttackSpec) -> str:
        return _attack_block(spec, [a.name for a in every_alias if a.target == spec.name], width)

    parts = [
        _section(ATTACKS_HEAD.format(n=len(attacks)), attacks, width, named_block),
        _section(SUITES_HEAD, suites, width, lambda s: _suite_block(s, width)),
        _section(ALIASES_HEAD, aliases, width, lambda a: _alias_block(a, width)),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def datasets_text(width: int = 80) -> str:
    """The built-in offline datasets: per dataset its name, input shape, classes, size
    (with the train/test split), source and scaling, each line at most ``width``."""
    from aegis.io.data import list_datasets

    width = max(width, 20)
    rows = list_datasets()
    if not rows:
        return "No built-in datasets.\n"
    head = _fill(
        f"Built-in datasets ({len(rows)}): offline, nothing is downloaded; give the name where "
        "a data file goes (e.g. `aegis attack model.pt mnist`).",
        width,
    )
    return "\n\n".join([head, *(_dataset_block(r, width) for r in rows)]) + "\n"


def defenses_text(width: int = 80, pattern: str = "*") -> str:
    """The preprocessing defenses (``attack --preprocess``): per defense its parameters with
    their defaults, whether it is differentiable or random, and how the adaptive evaluation
    attacks it (exact gradient, BPDA, EOT), each line at most ``width``."""
    from aegis.defenses.preprocessing import list_preprocessors

    width = max(width, 20)
    specs = list_preprocessors(pattern)
    if not specs:
        return f"No preprocessing defense matches {pattern!r}.\n"
    head = _fill(
        f"Preprocessing defenses ({len(specs)}), for attack --preprocess NAME[:PARAM=VALUE,...]; "
        "attacked adaptively by default (BPDA through non-differentiable steps, EOT for random "
        "ones).",
        width,
    )
    blocks = []
    for spec in specs:
        cls = spec.cls
        how = ("exact" if cls.differentiable else "BPDA") + (" + EOT" if cls.random else "")
        params = ", ".join(f"{k}={_value(v)}" for k, v in spec.parameters().items()) or "none"
        lines = [_fill(spec.name, width), _fill(spec.summary.replace("``", ""), width, INDENT)]
        lines.append(
            _fill(
                f"differentiable: {'yes' if cls.differentiable else 'no'}; random: "
                f"{'yes' if cls.random else 'no'}; adaptive gradient: {how}",
                width,
                INDENT,
            )
        )
        lines.append(_fill(f"parameters: {params}", width, INDENT))
        if spec.paper:
            lines.append(_fill(f"paper: {spec.paper}", width, INDENT))
        blocks.append("\n".join(lines))
    return "\n\n".join([head, *blocks]) + "\n"


def _section(head: str, items: Sequence[T], width: int, block: Callable[[T], str]) -> str:
    """A heading and one block per item, blank lines between; empty without items."""
    if not items:
        return ""
    return "\n\n".join([_fill(head, width), *(block(item) for item in items)])


def defaults(spec: AttackSpec) -> dict[str, str]:
    """Each parameter of an attack with its default, as shown (``auto`` where the attack
    chooses it from the budget, ``required`` where there is none)."""
    out: dict[str, str] = {}
    for f in fields(spec.cls):
        if not f.init:
            continue
        if f.default is not MISSING:
            out[f.name] = _value(f.default)
        elif f.default_factory is not MISSING:
            out[f.name] = _value(f.default_factory())
        else:
            out[f.name] = "required"
    return out


def _attack_block(spec: AttackSpec, aliases: list[str], width: int) -> str:
    title = spec.name + (f" (aliases: {', '.join(aliases)})" if aliases else "")
    facts = (
        f"norms: {', '.join(spec.norms)}; "
        f"targeted: {'yes' if spec.targeted else 'no'}; "
        f"access: {_access(spec)}; "
        f"minimal-norm: {'yes' if spec.minimal else 'no'}"
    )
    params = ", ".join(f"{k}={v}" for k, v in defaults(spec).items()) or "none"
    lines = [
        _fill(title, width),
        _fill(spec.summary, width, INDENT),
        _fill(facts, width, INDENT),
        _fill(f"parameters: {params}", width, INDENT),
        _fill(f"paper: {spec.paper}", width, INDENT),
    ]
    return "\n".join(line for line in lines if line.strip())


def _suite_block(suite: EnsembleSpec, width: int) -> str:
    budgets = "budgets fixed: a published protocol" if suite.fixed else "budgets may be overridden"
    lines = [_fill(f"{suite.name}: {budgets}", width), _fill(suite.summary, width, INDENT)]
    for norms, names in _members_by_norms(suite):
        lines.append(_fill(f"{norms}: {' -> '.join(names)}", width, INDENT))
    lines.append(_fill(f"paper: {suite.paper}", width, INDENT))
    return "\n".join(line for line in lines if line.strip())


def _alias_block(alias: AliasSpec, width: int) -> str:
    settings = [f"{k}={_value(v)} (always)" for k, v in alias.fixed.items()]
    settings += [f"{k}={_value(v)} (default)" for k, v in alias.defaults.items()]
    lines = [
        _fill(f"{alias.name} -> {alias.target}", width),
        _fill(alias.summary, width, INDENT),
        _fill(f"norms: {', '.join(alias.norms)} (others are refused)", width, INDENT),
    ]
    if settings:
        lines.append(_fill(f"settings: {', '.join(settings)}", width, INDENT))
    return "\n".join(lines)


def _dataset_block(row: dict[str, object], width: int) -> str:
    rest = dict(row)
    name = str(rest.pop("name", "?"))
    shape = rest.pop("shape", None)
    classes = rest.pop("num_classes", None)
    splits = rest.pop("splits", None)
    lines = [_fill(name, width)]
    if isinstance(shape, (list, tuple)):
        lines.append(_fill(f"shape: {'x'.join(str(d) for d in shape)} (CxHxW)", width, INDENT))
    if classes is not None:
        lines.append(_fill(f"classes: {classes}", width, INDENT))
    if isinstance(splits, dict):
        total = splits.get("all")
        parts = ", ".join(f"{k} {_count(v)}" for k, v in splits.items() if k != "all")
        size = f"size: {_count(total)}" if total is not None else "size:"
        lines.append(_fill(f"{size} ({parts})" if parts else size, width, INDENT))
    for key, value in rest.items():
        lines.append(_fill(f"{key.replace('_', ' ')}: {value}", width, INDENT))
    return "\n".join(lines)


def _attack_rows(attacks: list[AttackSpec], width: int) -> str:
    head: tuple[str, ...] = ("attack", "norms", "access", "tgt", "min", "paper", "summary")
    rows: list[tuple[str, ...]] = [
        (
            s.name,
            ",".join(s.norms),
            "gradients" if s.needs_gradients else "queries",
            "yes" if s.targeted else "no",
            "yes" if s.minimal else "no",
            s.paper,
            s.summary,
        )
        for s in attacks
    ]
    summary_at = len(_table(head, rows, width).splitlines()[1]) - len(head[-1])
    if width < summary_at + WIDE_SUMMARY:
        rows = [r[:5] + r[6:] for r in rows]  # no room for the papers: the blocks have them
        head = head[:5] + head[6:]
    legend = _fill(
        "tgt: can be targeted; min: minimal-norm (run it with --eps inf). Without --wide: "
        "each attack's parameters with their defaults.",
        width,
    )
    return _table(head, rows, width) + "\n" + legend


def _suite_rows(suites: list[EnsembleSpec], width: int) -> str:
    head = ("suite", "norms", "budgets", "members (first norm)")
    rows = [
        (
            s.name,
            ",".join(s.norms),
            "fixed" if s.fixed else "overridable",
            " -> ".join(n for n, _ in s.members[s.norms[0]]) if s.norms else "",
        )
        for s in suites
    ]
    return _table(head, rows, width)


def _alias_rows(aliases: list[AliasSpec], width: int) -> str:
    head = ("alias", "norms", "builds")
    rows = [(a.name, ",".join(a.norms), _builds(a)) for a in aliases]
    return _table(head, rows, width)


def _table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]], width: int) -> str:
    """Columns as wide as their longest cell, the last one cut with "…" to fit ``width``."""
    sizes = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]

    def line(cells: tuple[str, ...]) -> str:
        text = GAP.join(c.ljust(n) for c, n in zip(cells, sizes, strict=False)) + GAP + cells[-1]
        return _cut(text.rstrip(), width)

    rule = _cut(GAP.join("-" * n for n in [*sizes, len(head[-1])]), width)
    return "\n".join([line(head), rule, *(line(r) for r in rows)])


def _members_by_norms(suite: EnsembleSpec) -> list[tuple[str, list[str]]]:
    """(norms, member names) with the norms that share the same members grouped."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for norm, members in suite.members.items():
        groups.setdefault(tuple(n for n, _ in members), []).append(norm)
    return [(", ".join(norms), list(names)) for names, norms in groups.items()]


def _builds(alias: AliasSpec) -> str:
    chosen = {**alias.defaults, **alias.fixed}
    settings = ", ".join(f"{k}={_value(v)}" for k, v in chosen.items())
    return alias.target + (f" with {settings}" if settings else "")


def _access(spec: AttackSpec) -> str:
    return "gradients" if spec.needs_gradients else "queries only (black-box)"


def _value(v: Any) -> str:
    if v is None:
        return "auto"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _count(v: object) -> str:
    return f"{v:,}" if isinstance(v, int) else str(v)


def _fill(text: str, width: int, indent: str = "") -> str:
    """``text`` wrapped to ``width``: names are not split at their hyphens, and a word longer
    than a line (a long URL) is split rather than let through."""
    return textwrap.fill(
        text,
        width,
        initial_indent=indent,
        subsequent_indent=indent + INDENT,
        break_on_hyphens=False,
    )


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
