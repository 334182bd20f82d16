"""Fuzz the audit config (``aegis audit CONFIG``): random bytes, truncated and damaged YAML,
and valid configs with random values put at random places. Every case is either a config or
one ConfigError of one line naming where it went wrong: never another exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis.audit.config import AuditConfig, load_config, parse_config
from aegis.cli.audit import EXAMPLE
from aegis.errors import ConfigError

VALID: dict[str, Any] = {
    "models": ["models/mnist_cnn.safetensors"],
    "data": "mnist",
    "limit": 50,
    "evaluations": [
        {"type": "attack", "attack": "pgd", "eps": 0.3, "require": {"max_robust_accuracy": 0.5}},
        {"type": "detect", "fit_limit": 100},
        {"type": "membership", "shadows": 2},
    ],
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _one_line_or_config(load: Any) -> None:
    try:
        cfg = load()
    except ConfigError as exc:
        text = str(exc)
        assert text and "\n" not in text and "Traceback" not in text, text
        return
    assert isinstance(cfg, AuditConfig)


def _paths(node: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a nested dict/list where a value can be replaced or a key added."""
    out = [here]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*here, i))
    return out


def _put(root: Any, path: tuple[Any, ...], key: str, value: Any, replace: bool) -> Any:
    if not path:
        if replace or not isinstance(root, dict):
            return value
        return {**root, key: value}
    head, rest = path[0], path[1:]
    copy: Any = dict(root) if isinstance(root, dict) else list(root)
    copy[head] = _put(root[head], rest, key, value, replace)
    return copy


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes(tmp_path_factory: Any, data: bytes) -> None:
    path = Path(tmp_path_factory.mktemp("fuzz")) / "audit.yaml"
    path.write_bytes(data)
    _one_line_or_config(lambda: load_config(path))


@FUZZ
@given(cut=st.integers(min_value=0, max_value=len(EXAMPLE)), flip=st.integers(0, 255))
def test_truncated_and_damaged_example(tmp_path_factory: Any, cut: int, flip: int) -> None:
    path = Path(tmp_path_factory.mktemp("fuzz")) / "audit.yaml"
    raw = EXAMPLE.encode()[:cut]
    if raw:
        raw = raw[:-1] + bytes([flip])
    path.write_bytes(raw)
    _one_line_or_config(lambda: load_config(path))


@FUZZ
@given(
    where=st.integers(min_value=0, max_value=10**6),
    key=st.text(max_size=10),
    value=values,
    replace=st.booleans(),
)
def test_random_values_at_random_places(where: int, key: str, value: Any, replace: bool) -> None:
    places = _paths(VALID)
    raw = _put(VALID, places[where % len(places)], key, value, replace)
    _one_line_or_config(lambda: parse_config(raw))
    # and through YAML, as a user's file would carry it (where YAML can write it)
    try:
        text = yaml.safe_dump(raw)
    except yaml.YAMLError:
        return
    _one_line_or_config(lambda: parse_config(yaml.safe_load(text)))


def test_a_key_with_a_newline_is_named_on_one_line() -> None:
    """Found by the fuzzer: the unknown key itself carried the newline into the message."""
    for key in ("\n", "", " padded", "tab\there"):
        raw = {**VALID, "evaluations": [{"type": "attack", "require": {key: None}}]}
        try:
            parse_config(raw)
        except ConfigError as exc:
            text = str(exc)
            assert "\n" not in text and repr(key) in text, text
        else:
            raise AssertionError(f"key {key!r} was accepted")
