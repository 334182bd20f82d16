"""The factory that builds the architecture of a weights-only file (``.safetensors`` or a state
dict), and loading the weights into it.

A sidecar (``model.json``) is data, never code: the factory it names must be a *registered*
architecture (:func:`aegis.zoo.architectures.find_architecture`: aegis' own
``aegis.zoo.architectures:NAME``, a name added with ``register_architecture``, or an installed
package's ``aegis.architectures`` entry point), resolved by exact lookup. Any other
``package.module:function`` is imported only when the user names it (``factory=``, the CLI's
``--factory``) or trusts the sidecar explicitly (``trust_sidecar=True``, ``--trust-sidecar``).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from aegis.errors import AegisError, ConfigError, ModelError, UnsafeFileError
from aegis.io.loaded import Factory, _Loaded, _one_line

_JSON_SCALARS = (str, int, float, bool, type(None))
_MAX_DEPTH = 32


def _build_from_factory(
    file: Path,
    weights: dict[str, Tensor],
    what: str,
    sidecar: Mapping[str, Any],
    factory: str | Factory | None,
    factory_kwargs: Mapping[str, Any] | None,
    *,
    trust_sidecar: bool = False,
) -> _Loaded:
    fn, kwargs, source = _resolve_factory(
        file, sidecar, factory, factory_kwargs, trust_sidecar=trust_sidecar
    )
    try:
        module = fn(**kwargs)
    except AegisError:
        raise
    except Exception as exc:
        raise ModelError(
            f"factory {source.split(': ', 1)[1]}(**{kwargs}) failed ({_one_line(exc)}); check "
            "--factory and factory_kwargs"
        ) from exc
    if not isinstance(module, nn.Module):
        raise ModelError(
            f"factory {source.split(': ', 1)[1]} returned {type(module).__name__}, not a "
            "torch.nn.Module; point --factory at a function that builds the model"
        )
    weights, note = _strip_prefix(weights, set(module.state_dict()))
    expected = set(module.state_dict())
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - expected)
    if missing or unexpected:
        raise ModelError(
            f"weights in {file.name} do not fit the factory's model: missing keys "
            f"{_few(missing)}, unexpected keys {_few(unexpected)}; check --factory and "
            "factory_kwargs"
        )
    try:
        module.load_state_dict(weights, strict=True)
    except Exception as exc:
        detail = _one_line(exc, 300)
        raise ModelError(
            f"weights in {file.name} do not fit the factory's model ({detail}); check "
            "--factory and factory_kwargs"
        ) from exc
    loaded = _Loaded(fmt=f"{what} + factory", module=module, default_layout="NCHW", fresh=True)
    loaded.notes["factory"] = source + (f" with {kwargs}" if kwargs else "")
    if note:
        loaded.notes["weights"] = note
    return loaded


def _resolve_factory(
    file: Path,
    sidecar: Mapping[str, Any],
    factory: str | Factory | None,
    factory_kwargs: Mapping[str, Any] | None,
    *,
    trust_sidecar: bool,
) -> tuple[Factory, dict[str, Any], str]:
    """The factory, its keyword arguments and where it came from; nothing named by the sidecar
    is imported or called before it is known to be registered (or trusted)."""
    side_factory = sidecar.get("factory")
    if side_factory is not None and not isinstance(side_factory, str):
        raise ModelError(
            f"factory in the sidecar of {file.name} must be a string naming a registered "
            f"architecture, got {type(side_factory).__name__}; fix or remove it"
        )
    side_kwargs = _sidecar_kwargs(file, sidecar.get("factory_kwargs"))
    kwargs: dict[str, Any]
    if factory_kwargs is not None:
        kwargs = dict(factory_kwargs)
    elif factory is None or not side_factory or side_factory == factory:
        kwargs = dict(side_kwargs)
    else:
        kwargs = {}
    if factory is not None:
        source = f"flag: {factory if isinstance(factory, str) else _qualname(factory)}"
        return (factory if callable(factory) else _import_factory(factory)), kwargs, source
    if not side_factory:
        raise ModelError(
            f"{file.name} holds weights only; pass --factory package.module:function "
            "that builds the architecture (or a model.json sidecar naming a registered one)"
        )
    return (
        _sidecar_factory(file, side_factory, trust_sidecar=trust_sidecar),
        kwargs,
        (f"sidecar: {side_factory}"),
    )


def _sidecar_factory(file: Path, spec: str, *, trust_sidecar: bool) -> Factory:
    from aegis.zoo.architectures import find_architecture  # the registry; imports no model code

    try:
        found = find_architecture(spec)
    except ConfigError as exc:
        raise ModelError(f"the sidecar of {file.name} names factory {_shown(spec)}: {exc}") from exc
    if found is not None:
        return found
    if not trust_sidecar:
        raise UnsafeFileError(
            f"the sidecar of {file.name} names factory {_shown(spec)} which is not a registered "
            f"architecture; pass --factory {_shown(spec)} to trust it, or --trust-sidecar"
        )
    return _import_factory(spec)  # trusted explicitly: as if given by --factory


def _sidecar_kwargs(file: Path, raw: Any) -> dict[str, Any]:
    """``factory_kwargs`` of a sidecar: a JSON object of plain JSON values, keyed by names."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ModelError(f"factory_kwargs in the sidecar of {file.name} must be a JSON object")
    for key, value in raw.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ModelError(
                f"factory_kwargs in the sidecar of {file.name} has key {_shown(str(key))}, not "
                "a keyword name; fix or remove it"
            )
        if not _plain_json(value, 0):
            raise ModelError(
                f"factory_kwargs[{key!r}] in the sidecar of {file.name} is not a plain JSON "
                "value (null, true/false, a finite number, a string, or lists/objects of them); "
                "fix or remove it"
            )
    return dict(raw)


def _plain_json(value: Any, depth: int) -> bool:
    if depth > _MAX_DEPTH:
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if type(value) in _JSON_SCALARS:
        return True
    if type(value) is list:
        return all(_plain_json(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(isinstance(k, str) and _plain_json(v, depth + 1) for k, v in value.items())
    return False


def _qualname(fn: Factory) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def _import_factory(spec: str) -> Factory:
    """Import ``package.module:function`` the user named (``--factory``, ``--trust-sidecar``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"factory must look like 'package.module:function', got {_shown(spec)}; fix --factory"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"cannot import factory module {module_name!r} ({_one_line(exc)}); check --factory "
            "and that its package is installed"
        ) from exc
    fn: Any = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ModelError(f"module {module_name!r} has no {attr!r}; check --factory")
    if not callable(fn):
        raise ModelError(f"factory {spec!r} is not callable; point --factory at a function")
    built: Factory = fn
    return built


def _strip_prefix(weights: dict[str, Tensor], expected: set[str]) -> tuple[dict[str, Tensor], str]:
    """Drop a ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix if it fits."""
    if set(weights) == expected:
        return weights, ""
    for prefix in ("module.", "_orig_mod."):
        if weights and all(k.startswith(prefix) for k in weights):
            stripped = {k[len(prefix) :]: v for k, v in weights.items()}
            if set(stripped) == expected:
                return stripped, f"stripped the {prefix!r} prefix from every key"
    return weights, ""


def _few(keys: Sequence[str]) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:5])
    return f"{shown} (+{len(keys) - 5} more)" if len(keys) > 5 else shown


def _shown(text: str, limit: int = 120) -> str:
    """A name from a sidecar, safe to put in a one-line message (quoted if it needs it)."""
    shown = text if re.fullmatch(r"[\w.:\-]+", text) else repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "..."
