"""Names → attacks. The registry's names are the vocabulary of the CLI and configs."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from aegis.errors import ConfigError

if TYPE_CHECKING:
    from aegis.attacks.base import Attack

A = TypeVar("A", bound="type[Attack]")


@dataclass(frozen=True)
class AttackSpec:
    name: str
    cls: type[Attack]
    norms: tuple[str, ...]
    targeted: bool
    needs_gradients: bool
    paper: str
    summary: str
    minimal: bool = False

    def parameters(self) -> list[str]:
        return [f.name for f in fields(self.cls)]


_ATTACKS: dict[str, AttackSpec] = {}


def register(
    name: str,
    *,
    norms: tuple[str, ...],
    paper: str,
    targeted: bool = True,
    needs_gradients: bool = True,
    minimal: bool = False,
) -> Callable[[A], A]:
    """Class decorator: register an Attack under a lowercase kebab-case ``name``.

    ``minimal`` marks a minimal-norm attack: run with ``eps = inf`` it returns each point's
    smallest adversarial perturbation found, so one run gives the accuracy-vs-ε curve.
    """
    if name != name.lower() or " " in name or "_" in name:
        raise ConfigError(f"attack names are lowercase kebab-case, got {name!r}")

    def deco(cls: A) -> A:
        if name in _ATTACKS and _ATTACKS[name].cls is not cls:
            raise ConfigError(f"attack {name!r} is registered twice")
        doc = (cls.__doc__ or "").strip().splitlines()
        _ATTACKS[name] = AttackSpec(
            name, cls, norms, targeted, needs_gradients, paper, doc[0] if doc else "", minimal
        )
        cls.registry_name = name
        cls.norms = norms  # the registry's metadata is what the base class enforces
        cls.needs_gradients = needs_gradients
        cls.minimal = minimal
        return cls

    return deco


def _load_builtins() -> None:
    import aegis.attacks  # noqa: F401  (registers the built-in attacks)


def list_attacks(pattern: str = "*") -> list[AttackSpec]:
    """Registered attacks whose name matches a shell-style ``pattern``, sorted by name."""
    _load_builtins()
    return [s for n, s in sorted(_ATTACKS.items()) if fnmatch.fnmatch(n, pattern)]


def get_spec(name: str) -> AttackSpec:
    _load_builtins()
    if name not in _ATTACKS:
        close = difflib.get_close_matches(name, list(_ATTACKS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown attack {name!r}; {hint}`aegis attacks` lists the {len(_ATTACKS)} available"
        )
    return _ATTACKS[name]


def create_all(names: str | list[str], **params: Any) -> list[Attack]:
    """Build an ensemble from names (a list or ``"a,b,c"``); each member takes the ``params``
    it has, and a parameter no member has is an error."""
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    if not wanted or not all(wanted):
        raise ConfigError(f"attack names must be non-empty, got {names!r}")
    given = {k: v for k, v in params.items() if v is not None}
    specs = [get_spec(n) for n in wanted]
    unused = sorted(set(given) - {p for s in specs for p in s.parameters()})
    if unused:
        raise ConfigError(
            f"no attack of {', '.join(wanted)} has parameter {', '.join(unused)}; "
            "`aegis attacks` lists each attack's parameters"
        )
    return [
        create(s.name, **{k: v for k, v in given.items() if k in s.parameters()}) for s in specs
    ]


def create(name: str, **params: Any) -> Attack:
    """Build the attack registered as ``name``; ``None`` values keep the defaults."""
    spec = get_spec(name)
    allowed = set(spec.parameters())
    given = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ConfigError(
            f"attack {name!r} has no parameter {', '.join(unknown)}; "
            f"its parameters are {', '.join(sorted(allowed))}"
        )
    return spec.cls(**given)
