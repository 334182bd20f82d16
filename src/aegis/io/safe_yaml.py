"""Bounded YAML parsing for files a user (or an attacker) hands to aegis.

:func:`load_yaml` is ``yaml.safe_load`` with limits, so a short hostile file cannot take minutes
or gigabytes ("billion laughs": nested aliases that expand exponentially), and with duplicate
mapping keys refused, so a second ``require:`` cannot silently replace a strict first one:

- a document over ``max_bytes`` is refused before it is parsed;
- a document with more than ``max_nodes`` values once its aliases are expanded is refused
  (counted on the composed node graph, each node's size computed once);
- nesting deeper than ``max_depth``, literal or through aliases, and recursive aliases are refused;
- a key given twice in one mapping is refused with both line numbers (merge keys ``<<:`` still
  work: a key they bring in may be overridden, as YAML specifies).

Every problem is one :class:`~aegis.errors.ConfigError` line that starts with ``source``.

    >>> load_yaml("a: &x [1, 2]\\nb: *x\\n", "audit.yaml")
    {'a': [1, 2], 'b': [1, 2]}
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from aegis.errors import ConfigError

MAX_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 64
MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):  # type: ignore[misc]
    """A limit was hit; the message is the user-facing reason (without the source prefix)."""


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _short(value: object, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


class BoundedSafeLoader(yaml.SafeLoader):  # type: ignore[misc]
    """A ``yaml.SafeLoader`` that counts nodes and depth while composing and refuses duplicate
    keys; :func:`load_yaml` adds the size limit and the alias-expansion walk."""

    def __init__(self, stream: str, *, max_nodes: int, max_depth: int) -> None:
        super().__init__(stream)
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.depth = 0
        self.nodes = 0
        self.aliases = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            return super().compose_node(parent, index)
        self.nodes += 1
        self.depth += 1
        try:
            if self.nodes > self.max_nodes:
                line = int(self.peek_event().start_mark.line) + 1
                raise _Refused(
                    f"more than {self.max_nodes} values (at line {line}); an audit config is "
                    "short, trim it"
                )
            if self.depth > self.max_depth:
                line = int(self.peek_event().start_mark.line) + 1
                raise _Refused(
                    f"nested deeper than {self.max_depth} levels at line {line}; flatten it"
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == MERGE_TAG:
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise _Refused(
                    f"duplicate key {_short(key_node.value)} at lines {seen[key]} and "
                    f"{_line(key_node)}; keep one"
                )
            seen[key] = _line(key_node)
        return node


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def check_expansion(root: Node, *, max_nodes: int, max_depth: int, aliases: bool) -> None:
    """Refuse a node graph whose expansion (every alias written out) has more than
    ``max_nodes`` values, is nested deeper than ``max_depth``, or contains itself.

    An iterative post-order walk that computes each node's expanded size and depth once, so
    it costs the size of the graph, not of its expansion."""
    sizes: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            kids = [sizes[id(kid)] for kid in _children(node)]
            size = 1 + sum(s for s, _ in kids)
            depth = 1 + max((d for _, d in kids), default=0)
            open_nodes.discard(key)
            if size > max_nodes:
                what = "expands aliases to" if aliases else "has"
                hint = " (an alias bomb?); write the values out" if aliases else "; trim it"
                raise _Refused(
                    f"the value at line {_line(node)} {what} more than {max_nodes} values{hint}"
                )
            if depth > max_depth:
                raise _Refused(
                    f"the value at line {_line(node)} nests deeper than {max_depth} levels "
                    "once its aliases are expanded; write the values out"
                )
            sizes[key] = (size, depth)
        elif key not in sizes:
            if key in open_nodes:
                raise _Refused(
                    f"the value at line {_line(node)} contains an alias to itself (a recursive "
                    "alias); write the values out"
                )
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((kid, False) for kid in _children(node))


def load_yaml(
    text: str,
    source: str,
    *,
    max_bytes: int = MAX_BYTES,
    max_nodes: int = MAX_NODES,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Parse one YAML document safely within the limits; raise one-line :class:`ConfigError`
    (``"<source>: <problem>; <fix>"``) for invalid YAML and for every limit."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise ConfigError(
            f"{source}: {size} bytes, over the {max_bytes}-byte limit for a YAML config; "
            "check the path (a config is a short file)"
        )
    try:
        loader = BoundedSafeLoader(text, max_nodes=max_nodes, max_depth=max_depth)
    except yaml.YAMLError as exc:  # the reader refuses control characters up front
        raise ConfigError(_invalid(source, exc)) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_expansion(node, max_nodes=max_nodes, max_depth=max_depth, aliases=loader.aliases > 0)
        return loader.construct_document(node)
    except _Refused as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(_invalid(source, exc)) from None
    finally:
        loader.dispose()


def _invalid(source: str, exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["unknown"])[0]
    return f"{source}: invalid YAML{where}: {' '.join(str(problem).split())[:160]}"
