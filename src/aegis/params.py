"""Hyper-parameters checked once, by the type their dataclass field declares.

Attacks and preprocessing steps are frozen dataclasses whose fields say what each parameter is
(``steps: int``, ``step_size: float | None``, ``random_start: bool``). A value from the command
line (``-p steps=40``, always text), a YAML config or a Python call goes through
:func:`coerce_params`, which turns text into that type and refuses what does not fit, with one
error naming the owner and the parameter. Ranges (``steps >= 1``) stay in each constructor.

    >>> coerce_params("pgd", PGD, {"steps": "40", "random_start": "false"})
    {'steps': 40, 'random_start': False}
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from aegis.errors import ConfigError

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def coerce_params(owner: str, cls: type, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` converted to the types of ``cls``' dataclass fields (unknown names pass
    through unchanged: the caller reports them with the list of known ones)."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    return {
        key: coerce(owner, key, value, hints[key]) if key in known else value
        for key, value in params.items()
    }


def coerce(owner: str, key: str, value: Any, kind: Any) -> Any:
    """``value`` as a ``kind`` (bool, int, float, str, or one of them ``| None``)."""
    options = typing.get_args(kind) if _is_union(kind) else (kind,)
    optional = type(None) in options
    base = [k for k in options if k is not type(None)]
    if len(base) != 1 or base[0] not in _WORDS:
        return value  # a type this module does not know: the constructor checks it
    target = base[0]
    if value is None or (optional and isinstance(value, str) and value.strip().lower() == "none"):
        if optional:
            return None
        raise ConfigError(f"{owner}: {key} must be {_WORDS[target]}, got none")
    converted = _convert(value, target)
    if converted is _BAD:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "...'"
        extra = " or none" if optional else ""
        raise ConfigError(f"{owner}: {key} must be {_WORDS[target]}{extra}, got {shown}")
    return converted


_BAD = object()


def _is_union(kind: Any) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType)


def _convert(value: Any, target: type) -> Any:
    if target is str:
        return value.strip() if isinstance(value, str) else _BAD
    if target is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, (str, int)) else ""
        return True if text in _TRUE else False if text in _FALSE else _BAD
    if isinstance(value, bool):  # True is an int to Python, never a number of steps
        return _BAD
    if isinstance(value, str):
        value = _number(value.strip())
        if value is _BAD:
            return _BAD
    if not isinstance(value, (int, float)) or math.isnan(value):
        return _BAD
    if target is int:
        return int(value) if math.isfinite(value) and value == int(value) else _BAD
    return float(value)


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return _BAD
