"""Names → attacks. The registry's names are the vocabulary of the CLI and configs."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from aegis.errors import ConfigError
from aegis.params import coerce_params

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
        if name in _ENSEMBLES or (name in _ATTACKS and _ATTACKS[name].cls is not cls):
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


@dataclass(frozen=True)
class EnsembleSpec:
    """A named suite of attacks run in order, each on the points the earlier ones failed on.

    ``members`` maps each norm to ``(attack name, parameters)`` pairs. ``fixed`` suites are
    published protocols: their budgets cannot be overridden, so their numbers stay comparable.
    """

    name: str
    members: dict[str, tuple[tuple[str, dict[str, Any]], ...]]
    paper: str
    summary: str
    fixed: bool = True

    @property
    def norms(self) -> tuple[str, ...]:
        return tuple(self.members)

    def parameters(self) -> list[str]:
        names = {n for members in self.members.values() for n, _ in members}
        return sorted({p for n in names for p in _spec(n).parameters()})


_ENSEMBLES: dict[str, EnsembleSpec] = {}


def register_ensemble(spec: EnsembleSpec) -> EnsembleSpec:
    """Register a suite under its name (names are shared with attacks)."""
    if spec.name in _ATTACKS or (spec.name in _ENSEMBLES and _ENSEMBLES[spec.name] != spec):
        raise ConfigError(f"{spec.name!r} is registered twice")
    _ENSEMBLES[spec.name] = spec
    return spec


def list_ensembles(pattern: str = "*") -> list[EnsembleSpec]:
    _load_builtins()
    return [s for n, s in sorted(_ENSEMBLES.items()) if fnmatch.fnmatch(n, pattern)]


def _load_builtins() -> None:
    import aegis.attacks  # noqa: F401  (registers the built-in attacks)


def list_attacks(pattern: str = "*") -> list[AttackSpec]:
    """Registered attacks whose name matches a shell-style ``pattern``, sorted by name."""
    _load_builtins()
    return [s for n, s in sorted(_ATTACKS.items()) if fnmatch.fnmatch(n, pattern)]


def _spec(name: str) -> AttackSpec:
    if name not in _ATTACKS:
        known = [*_ATTACKS, *_ENSEMBLES]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown attack {name!r}; {hint}`aegis attacks` lists the {len(known)} available"
        )
    return _ATTACKS[name]


def get_spec(name: str) -> AttackSpec:
    _load_builtins()
    return _spec(name)


def is_ensemble(name: str) -> bool:
    _load_builtins()
    return name in _ENSEMBLES


def expand(names: str | list[str], norm: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Attack names (a list or ``"a,b,c"``, suites included) → ``(name, parameters)`` members."""
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    if not wanted or not all(wanted):
        raise ConfigError(f"attack names must be non-empty, got {names!r}")
    _load_builtins()
    out: list[tuple[str, dict[str, Any]]] = []
    for name in wanted:
        if name not in _ENSEMBLES:
            out.append((get_spec(name).name, {}))
            continue
        suite = _ENSEMBLES[name]
        if norm is None or norm not in suite.members:
            raise ConfigError(
                f"the {name!r} suite is defined for norms {', '.join(suite.norms)}, not {norm!r}"
            )
        out.extend((n, dict(p)) for n, p in suite.members[norm])
    return out


def create_all(names: str | list[str], *, norm: str | None = None, **params: Any) -> list[Attack]:
    """Build an ensemble from names (a list or ``"a,b,c"``; a suite name such as ``standard``
    expands to its members for ``norm``); each member takes the ``params`` it has, and a
    parameter no member has is an error. A fixed suite (a published protocol) takes none."""
    _load_builtins()
    given = {k: v for k, v in params.items() if v is not None}
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    fixed = [n for n in wanted if n in _ENSEMBLES and _ENSEMBLES[n].fixed]
    members = expand(names, norm)
    if fixed and given:
        raise ConfigError(
            f"{fixed[0]!r} uses its published budgets, so {', '.join(sorted(given))} cannot "
            "be changed; name its members instead (e.g. --attack "
            f"{','.join(n for n, _ in members)}) or use the 'fast' suite"
        )
    specs = [get_spec(n) for n, _ in members]
    unused = sorted(set(given) - {p for s in specs for p in s.parameters()})
    if unused and len(specs) == 1:
        create(specs[0].name, **given)  # raises, listing the attack's parameters
    if unused:
        raise ConfigError(
            f"no attack of {', '.join(n for n, _ in members)} has parameter "
            f"{', '.join(unused)}; `aegis attacks` lists each attack's parameters"
        )
    return [
        create(s.name, **{**own, **{k: v for k, v in given.items() if k in s.parameters()}})
        for s, (_, own) in zip(specs, members, strict=True)
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
    return spec.cls(**coerce_params(name, spec.cls, given))
