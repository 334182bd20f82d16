"""Names → entries. ``Registry[T]`` is the one registry every kind uses (attacks, suites,
aliases here; preprocessing steps, training defenses, detectors, poisoning attacks, poison
detectors and architectures in their own modules), and the attack functions below are the
vocabulary of the CLI and configs.

    >>> steps = Registry[type[Step]]("preprocessing defense")
    >>> steps.register("jpeg", Jpeg)
    >>> steps.create("jpeg", quality="75")  # checked and coerced by Jpeg's field types
    >>> steps.list("j*")
"""

from __future__ import annotations

import builtins
import difflib
import fnmatch
import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from aegis.errors import ConfigError
from aegis.params import coerce_params

if TYPE_CHECKING:
    from aegis.attacks.base import Attack

A = TypeVar("A", bound="type[Attack]")
T = TypeVar("T")

UNKNOWN_PARAMETER = "{kind} {name!r} has no parameter {unknown}; {hint}its parameters are {known}"
"""The default message for unknown parameters; its fields: ``kind``, ``name``, ``unknown``
(the names, comma-separated), ``quoted`` (the same, each in quotes), ``hint`` (a "did you mean"
or empty) and ``known`` (the parameters, sorted)."""

_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class Registry(Generic[T]):
    """Names → entries of one ``kind`` (the word its messages use: ``"attack"``).

    Names are lowercase kebab-case unless ``underscores`` (``mnist_cnn``) or not ``lowercase``
    allow more. ``listing`` says how to see them after an unknown name (fields ``names`` and
    ``count``); ``aliases`` maps old names to registered ones. An entry is a class, a factory,
    or a spec whose ``cls`` is the class; :meth:`create` builds it after checking the
    parameters (and coercing them by the class' field types when it is a dataclass).
    Iterating, ``len``, ``in`` and ``registry[name]`` work as on a dict (registration order).
    """

    def __init__(
        self,
        kind: str,
        *,
        underscores: bool = False,
        lowercase: bool = True,
        listing: str = "use one of {names}",
        aliases: Mapping[str, str] | None = None,
        unknown_parameter: str = UNKNOWN_PARAMETER,
    ) -> None:
        self.kind = kind
        self.listing = listing
        self.aliases: Mapping[str, str] = aliases if aliases is not None else {}
        self.unknown_parameter = unknown_parameter
        self._entries: dict[str, T] = {}
        first = "a-z0-9" if lowercase else "A-Za-z0-9"
        self._pattern = re.compile(f"[{first}][{first}{'_' if underscores else ''}-]*")
        chars = "letters, digits, '_' or '-'" if underscores else "letters, digits or '-'"
        plain = "lowercase kebab-case" if not underscores else "lowercase " + chars
        self._rule = plain if lowercase else chars

    def check_name(self, name: str) -> None:
        """Refuse a name this kind does not allow, in one line."""
        if not isinstance(name, str) or not self._pattern.fullmatch(name):
            raise ConfigError(f"{self.kind} names are {self._rule}, got {name!r}; rename it")

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Register ``entry`` as ``name`` (again with an equal entry is a no-op); returns it."""
        self.check_name(name)
        old = self._entries.get(name)
        taken = name in self.aliases or (old is not None and old is not entry and old != entry)
        if taken and not replace:
            raise ConfigError(
                f"{self.kind} {name!r} is already registered, so it would be registered twice; "
                "pick another name or pass replace=True"
            )
        self._entries[name] = entry
        return entry

    def pop(self, name: str, default: T | None = None) -> T | None:
        """Unregister ``name`` (tests and plugins); its entry, or ``default``."""
        return self._entries.pop(name, default)

    def get(self, name: str) -> T:
        """The entry registered as ``name`` (or an alias of it); else one ConfigError line."""
        key = self.aliases.get(name, name)
        if key not in self._entries:
            raise self.unknown(name)
        return self._entries[key]

    def unknown(self, name: str, *, also: Iterable[str] = ()) -> ConfigError:
        """The error for an unknown ``name``: a "did you mean" (among the names, the aliases
        and ``also``) and how to list them."""
        extra = list(also)
        close = difflib.get_close_matches(str(name), [*self._entries, *self.aliases, *extra], n=1)
        hint = f"did you mean {self.aliases.get(close[0], close[0])!r}? " if close else ""
        count = len(self._entries) + len(extra)
        how = self.listing.format(names=", ".join(self.names()), count=count)
        return ConfigError(f"unknown {self.kind} {name!r}; {hint}{how}")

    def names(self) -> builtins.list[str]:
        return sorted(self._entries)

    def list(self, pattern: str = "*") -> builtins.list[T]:
        """The entries whose name matches the shell-style ``pattern``, sorted by name."""
        return [self._entries[n] for n in self.names() if fnmatch.fnmatch(n, pattern)]

    def items(self) -> builtins.list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"

    def builder(self, name: str) -> Callable[..., Any]:
        """What :meth:`create` calls for ``name``: the entry's ``cls``, or the entry itself."""
        entry = self.get(name)
        cls = getattr(entry, "cls", None)
        return cls if isinstance(cls, type) else cast("Callable[..., Any]", entry)

    def parameters(self, name: str) -> builtins.list[str] | None:
        """The keyword parameters ``name`` takes (None: any, through ``**kwargs``)."""
        target = self.builder(name)
        if isinstance(target, type) and is_dataclass(target):
            return [f.name for f in fields(target) if f.init]
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return None
        found = signature.parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in found):
            return None
        return [p.name for p in found if p.kind in _KEYWORD]

    def check(self, name: str, params: Mapping[str, Any], *, owner: str = "") -> dict[str, Any]:
        """``params`` for ``name``: unknown ones refused naming the known ones, values coerced
        by a dataclass' field types. ``owner`` (default ``name``) is the name messages use."""
        owner = owner or name
        target = self.builder(name)
        known = self.parameters(name)
        unknown = sorted(set(params) - set(known)) if known is not None else []
        if unknown and known is not None:
            close = difflib.get_close_matches(unknown[0], known, n=1) if len(unknown) == 1 else []
            raise ConfigError(
                self.unknown_parameter.format(
                    kind=self.kind,
                    name=owner,
                    unknown=", ".join(unknown),
                    quoted=", ".join(repr(u) for u in unknown),
                    hint=f"did you mean {close[0]!r}? " if close else "",
                    known=", ".join(sorted(known)) or "none",
                )
            )
        if isinstance(target, type) and is_dataclass(target):
            return coerce_params(owner, target, params)
        return dict(params)

    def create(self, name: str, /, **params: Any) -> Any:
        """Build ``name`` with ``params`` (checked by :meth:`check`)."""
        values = self.check(name, params)
        try:
            return self.builder(name)(**values)
        except TypeError as exc:
            raise ConfigError(f"bad arguments for {self.kind} {name!r}: {exc}") from exc


# -- attacks, suites, aliases -----------------------------------------------------------------


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


_ATTACKS = Registry[AttackSpec]("attack", listing="`aegis attacks` lists the {count} available")


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
    _ATTACKS.check_name(name)

    def deco(cls: A) -> A:
        _not_taken(name, _ENSEMBLES, _ALIASES)
        doc = (cls.__doc__ or "").strip().splitlines()
        _ATTACKS.register(
            name,
            AttackSpec(
                name, cls, norms, targeted, needs_gradients, paper, doc[0] if doc else "", minimal
            ),
        )
        cls.registry_name = name
        cls.norms = norms  # the registry's metadata is what the base class enforces
        cls.needs_gradients = needs_gradients
        cls.minimal = minimal
        return cls

    return deco


def _not_taken(name: str, *others: Registry[Any]) -> None:
    """Attacks, suites and aliases share one name space."""
    if any(name in other for other in others):
        raise ConfigError(f"{name!r} is registered twice")


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


_ENSEMBLES = Registry[EnsembleSpec]("suite")


def register_ensemble(spec: EnsembleSpec) -> EnsembleSpec:
    """Register a suite under its name (names are shared with attacks)."""
    _not_taken(spec.name, _ATTACKS, _ALIASES)
    if spec.name in _ENSEMBLES and _ENSEMBLES[spec.name] != spec:
        raise ConfigError(f"{spec.name!r} is registered twice")
    return _ENSEMBLES.register(spec.name, spec)


def list_ensembles(pattern: str = "*") -> list[EnsembleSpec]:
    _load_builtins()
    return _ENSEMBLES.list(pattern)


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


_ALIASES = Registry[AliasSpec]("alias")


def register_alias(spec: AliasSpec) -> AliasSpec:
    """Register an alias; its name may not be an attack's, a suite's or another alias's."""
    _not_taken(spec.name, _ATTACKS, _ENSEMBLES)
    if spec.name in _ALIASES and _ALIASES[spec.name] != spec:
        raise ConfigError(f"{spec.name!r} is registered twice")
    return _ALIASES.register(spec.name, spec)


def list_aliases(pattern: str = "*") -> list[AliasSpec]:
    """Registered aliases whose name matches a shell-style ``pattern``, sorted by name."""
    _load_builtins()
    return _ALIASES.list(pattern)


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
    return _ATTACKS.list(pattern)


def _spec(name: str) -> AttackSpec:
    if name in _ALIASES:
        name = _ALIASES[name].target
    if name not in _ATTACKS:
        raise _ATTACKS.unknown(name, also=[*_ENSEMBLES, *_ALIASES])
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
    given = {k: v for k, v in params.items() if v is not None}
    values = _ATTACKS.check(spec.name, given, owner=name)
    if name not in _ALIASES:
        return spec.cls(**values)
    alias = _ALIASES[name]
    return _alias_class(alias)(**alias.settings(values))
