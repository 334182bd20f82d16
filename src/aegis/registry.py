"""Names → attacks. The registry's names are the vocabulary of the CLI and configs."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar, cast

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
        taken = name in _ENSEMBLES or name in _ALIASES
        if taken or (name in _ATTACKS and _ATTACKS[name].cls is not cls):
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
    taken = spec.name in _ATTACKS or spec.name in _ALIASES
    if taken or (spec.name in _ENSEMBLES and _ENSEMBLES[spec.name] != spec):
        raise ConfigError(f"{spec.name!r} is registered twice")
    _ENSEMBLES[spec.name] = spec
    return spec


def list_ensembles(pattern: str = "*") -> list[EnsembleSpec]:
    _load_builtins()
    return [s for n, s in sorted(_ENSEMBLES.items()) if fnmatch.fnmatch(n, pattern)]


@dataclass(frozen=True)
class AliasSpec:
    """Another name for a registered attack with some settings chosen, such as the seed's
    strategy names ("sparse gradient attack" → ``sparse-gradient``).

    ``norms``: the norms the alias is meant for (others are refused in one line that says
    which ``--norm`` to use). ``fixed``: settings that make the alias what it is (giving
    another value is an error). ``defaults``: settings that replace the target's defaults
    and may be overridden. An attack built from an alias is a subclass of the target's class
    (its ``registry_name`` is the target's) whose results name both: ``{"name": "pgd",
    "alias": "sparse-gradient", ...}``; it refuses the norms the alias is not for."""

    name: str
    target: str
    norms: tuple[str, ...]
    summary: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def check_norm(self, norm: str) -> None:
        """One ConfigError line naming the ``--norm`` to use when ``norm`` is not the alias's."""
        if norm not in self.norms:
            flags = " or ".join(f"--norm {n}" for n in self.norms)
            raise ConfigError(
                f"{self.name} is {self.target} for {', '.join(self.norms)} only: run it with "
                f"{flags}, not {norm!r} (for {norm} use --attack {self.target})"
            )

    def settings(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The target's parameters: the alias's defaults, then ``given``, then its fixed ones."""
        for key, value in self.fixed.items():
            if key in given and given[key] != value:
                raise ConfigError(
                    f"{self.name} always uses {key}={value}; use {self.target} for "
                    f"{key}={given[key]}"
                )
        return {**self.defaults, **given, **self.fixed}

    def describe(self) -> str:
        """What the alias builds: ``pgd`` or ``pgd with restarts=5, random_start=True``."""
        chosen = {**self.defaults, **self.fixed}
        parts = ", ".join(f"{k}={v}" for k, v in chosen.items())
        return self.target + (f" with {parts}" if parts else "")


_ALIASES: dict[str, AliasSpec] = {}


def register_alias(spec: AliasSpec) -> AliasSpec:
    """Register an alias; its name may not be an attack's, a suite's or another alias's."""
    taken = spec.name in _ATTACKS or spec.name in _ENSEMBLES
    if taken or (spec.name in _ALIASES and _ALIASES[spec.name] != spec):
        raise ConfigError(f"{spec.name!r} is registered twice")
    _ALIASES[spec.name] = spec
    return spec


def list_aliases(pattern: str = "*") -> list[AliasSpec]:
    """Registered aliases whose name matches a shell-style ``pattern``, sorted by name."""
    _load_builtins()
    return [s for n, s in sorted(_ALIASES.items()) if fnmatch.fnmatch(n, pattern)]


SPARSE_GRADIENT = register_alias(
    AliasSpec(
        "sparse-gradient",
        "pgd",
        ("l1",),
        "PGD's L1 step: each step moves only the top (1 - sparsity) share of the gradient's "
        "coordinates",
    )
)
RANDOM_GRADIENT = register_alias(
    AliasSpec(
        "random-gradient",
        "pgd",
        ("linf", "l2", "l1"),
        "PGD from a random start in the ball, restarted 5 times by default (each restart "
        "only on the points not yet fooled)",
        fixed={"random_start": True},
        defaults={"restarts": 5},
    )
)


_ALIAS_CLASSES: dict[str, type[Attack]] = {}


def _alias_class(alias: AliasSpec) -> type[Attack]:
    """The target's class, except that it records the alias in its results, refuses the
    norms the alias is not for, and pickles through :func:`_rebuild_alias`."""
    if alias.name in _ALIAS_CLASSES:
        return _ALIAS_CLASSES[alias.name]
    base = _spec(alias.target).cls

    def to_dict(self: Attack) -> dict[str, object]:
        out = base.to_dict(self)
        return {"name": out.pop("name"), "alias": alias.name, **out}

    def call(self: Attack, model: Any, x: Any, y: Any, threat: Any, **kwargs: Any) -> Any:
        alias.check_norm(threat.norm)
        return base.__call__(self, model, x, y, threat, **kwargs)

    def reduce(self: Attack) -> tuple[Any, ...]:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        return (_rebuild_alias, (alias.name, values))

    name = "".join(part.title() for part in alias.name.split("-"))
    cls = cast(
        "type[Attack]",
        type(
            name,
            (base,),
            {
                "__module__": __name__,
                "__doc__": f"{alias.name}: {alias.describe()}. {base.__doc__ or ''}",
                "norms": alias.norms,
                "to_dict": to_dict,
                "__call__": call,
                "__reduce__": reduce,
            },
        ),
    )
    _ALIAS_CLASSES[alias.name] = cls
    return cls


def _rebuild_alias(name: str, values: dict[str, Any]) -> Attack:
    _load_builtins()
    return _alias_class(_ALIASES[name])(**values)


def _load_builtins() -> None:
    import aegis.attacks  # noqa: F401  (registers the built-in attacks)


def list_attacks(pattern: str = "*") -> list[AttackSpec]:
    """Registered attacks whose name matches a shell-style ``pattern``, sorted by name."""
    _load_builtins()
    return [s for n, s in sorted(_ATTACKS.items()) if fnmatch.fnmatch(n, pattern)]


def _spec(name: str) -> AttackSpec:
    if name in _ALIASES:
        name = _ALIASES[name].target
    if name not in _ATTACKS:
        known = [*_ATTACKS, *_ENSEMBLES, *_ALIASES]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown attack {name!r}; {hint}`aegis attacks` lists the {len(known)} available"
        )
    return _ATTACKS[name]


def get_spec(name: str) -> AttackSpec:
    """The attack registered as ``name``; an alias gives its target's spec."""
    _load_builtins()
    return _spec(name)


def is_ensemble(name: str) -> bool:
    _load_builtins()
    return name in _ENSEMBLES


def expand(names: str | list[str], norm: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Attack names (a list or ``"a,b,c"``, suites included) → ``(name, parameters)`` members.
    An alias stays an alias (``create`` builds it); with ``norm`` its norms are checked."""
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    if not wanted or not all(wanted):
        raise ConfigError(f"attack names must be non-empty, got {names!r}")
    _load_builtins()
    out: list[tuple[str, dict[str, Any]]] = []
    for name in wanted:
        if name in _ALIASES:
            if norm is not None:
                _ALIASES[name].check_norm(norm)
            out.append((name, {}))
            continue
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
    expands to its members for ``norm``; an alias such as ``sparse-gradient`` builds its
    target with its settings); each member takes the ``params`` it has, and a parameter no
    member has is an error. A fixed suite (a published protocol) takes none."""
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
        create(members[0][0], **given)  # raises, listing the attack's parameters
    if unused:
        raise ConfigError(
            f"no attack of {', '.join(n for n, _ in members)} has parameter "
            f"{', '.join(unused)}; `aegis attacks` lists each attack's parameters"
        )
    return [
        create(n, **{**own, **{k: v for k, v in given.items() if k in s.parameters()}})
        for s, (n, own) in zip(specs, members, strict=True)
    ]


def create(name: str, **params: Any) -> Attack:
    """Build the attack registered as ``name`` (or an alias's target with the alias's
    settings); ``None`` values keep the defaults."""
    spec = get_spec(name)
    allowed = set(spec.parameters())
    given = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ConfigError(
            f"attack {name!r} has no parameter {', '.join(unknown)}; "
            f"its parameters are {', '.join(sorted(allowed))}"
        )
    values = coerce_params(name, spec.cls, given)
    alias = _ALIASES.get(name)
    if alias is None:
        return spec.cls(**values)
    return _alias_class(alias)(**alias.settings(values))
