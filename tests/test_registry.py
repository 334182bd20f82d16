"""The one generic Registry, and every kind that uses it, driven by the registries themselves:
each entry builds with its defaults, names are unique and well-formed, a misspelled name gets a
"did you mean", ``list`` filters by wildcard, and an unknown parameter names the known ones."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest

from aegis import registry as attacks
from aegis.defenses import detection, preprocessing, training
from aegis.errors import ConfigError
from aegis.poisoning import attacks as poisoning_attacks
from aegis.poisoning import detection as poison_detection
from aegis.registry import Registry
from aegis.zoo import architectures

attacks.list_attacks()  # loads the built-in attacks

KINDS: dict[str, Registry[Any]] = {
    "attack": attacks._ATTACKS,
    "suite": attacks._ENSEMBLES,
    "alias": attacks._ALIASES,
    "preprocessing": preprocessing._PREPROCESSORS,
    "training": training._TRAINING,
    "detector": detection.DETECTORS,
    "poisoning-attack": poisoning_attacks.ATTACKS,
    "poison-detector": poison_detection.DETECTORS,
    "architecture": architectures.ARCHITECTURES,
}
BUILDABLE = [k for k in KINDS if k not in ("suite", "alias")]  # data, not classes
REQUIRED: dict[str, dict[str, Any]] = {"tiny_mlp": {"input_shape": (1, 8, 8), "num_classes": 3}}
"""Parameters an entry cannot do without (everything else builds from its defaults)."""
KEBAB = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
SNAKE = re.compile(r"[a-z0-9]+(_[a-z0-9]+)*")


def _misspelled(name: str) -> str:
    return name[:-1] + ("x" if name[-1] != "x" else "y")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_names_are_unique_and_well_formed(kind: str) -> None:
    reg = KINDS[kind]
    names = reg.names()
    assert names and len(names) == len(set(names)) == len(reg)
    shape = SNAKE if kind == "architecture" else KEBAB
    assert all(shape.fullmatch(n) for n in names), names
    assert [getattr(e, "name", n) for n, e in reg.items()] == list(reg)


def test_attack_suite_and_alias_names_do_not_overlap() -> None:
    groups = [set(KINDS[k].names()) for k in ("attack", "suite", "alias")]
    assert sum(len(g) for g in groups) == len(set().union(*groups))


@pytest.mark.parametrize("kind", BUILDABLE)
def test_every_entry_builds_with_its_defaults(kind: str) -> None:
    reg = KINDS[kind]
    for name in reg:
        built = reg.create(name, **REQUIRED.get(name, {}))
        assert built is not None and not isinstance(built, type), name


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_misspelled_name_gets_a_hint(kind: str) -> None:
    reg = KINDS[kind]
    name = max(reg.names(), key=len)
    with pytest.raises(ConfigError, match=f"did you mean '{re.escape(name)}'") as info:
        reg.get(_misspelled(name))
    assert "\n" not in str(info.value) and f"unknown {reg.kind}" in str(info.value)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_list_filters_by_wildcard(kind: str) -> None:
    reg = KINDS[kind]
    first = reg.names()[0][0]
    chosen = reg.list(f"{first}*")
    expected = [n for n in reg.names() if n.startswith(first)]
    assert chosen == [reg.get(n) for n in expected] and chosen
    assert reg.list("no-such-*") == [] and len(reg.list()) == len(reg)


@pytest.mark.parametrize("kind", BUILDABLE)
def test_unknown_parameter_names_the_known_ones(kind: str) -> None:
    reg = KINDS[kind]
    for name in reg:
        known = reg.parameters(name)
        assert known is not None, name
        with pytest.raises(ConfigError, match="no parameter") as info:
            reg.create(name, no_such_parameter=1)
        message = str(info.value)
        assert "no_such_parameter" in message and "\n" not in message
        assert all(p in message for p in known), (name, message)


def test_kinds_keep_their_public_functions() -> None:
    with pytest.raises(ConfigError, match=r"unknown attack 'pgdd'; did you mean 'pgd'\?"):
        attacks.create("pgdd")
    with pytest.raises(ConfigError, match="has no parameter stepz; did you mean 'steps'"):
        attacks.create("pgd", stepz=3)
    with pytest.raises(ConfigError, match=r"no parameter 'qualty'; did you mean 'quality'\?"):
        preprocessing.create_preprocessor("jpeg", qualty=75)
    assert training.get_training_spec("pgd").name == "pgd-at"  # an alias
    with pytest.raises(ConfigError, match=r"unknown defense 'pgd_at'; did you mean 'pgd-at'\?"):
        training.get_training_spec("pgd_at")
    with pytest.raises(ConfigError, match="bad arguments for architecture 'mnist_cnn'"):
        architectures.create("mnist_cnn", width=3)
    assert "mnist_cnn" in architectures.list_architectures()


@dataclass(frozen=True, kw_only=True)
class _Step:
    """A toy entry."""

    size: int = 2
    scale: float | None = None


def test_generic_registry() -> None:
    reg = Registry[type[_Step]]("step")
    assert reg.register("toy-step", _Step) is _Step
    reg.register("toy-step", _Step)  # the same entry again is a no-op
    assert "toy-step" in reg and "other" not in reg and reg.names() == ["toy-step"]
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("toy-step", type("Other", (_Step,), {}))
    for bad in ("Toy", "toy_step", "toy step", "-toy", ""):
        with pytest.raises(ConfigError, match="step names are lowercase kebab-case"):
            reg.register(bad, _Step)
    assert reg.create("toy-step", size="5", scale="none") == _Step(size=5, scale=None)
    with pytest.raises(ConfigError, match="toy-step: size must be an integer"):
        reg.create("toy-step", size="big")
    with pytest.raises(ConfigError, match="its parameters are scale, size"):
        reg.create("toy-step", sise=3)
    with pytest.raises(ConfigError, match="use one of toy-step"):
        reg.get("nothing")
    assert reg.pop("toy-step") is _Step and len(reg) == 0


def test_registry_options_underscores_aliases_and_factories() -> None:
    reg = Registry[Any]("net", underscores=True, lowercase=False, aliases={"old": "my_Net"})
    reg.register("my_Net", lambda *, width=3: ["net", width])
    assert reg.get("old") is reg.get("my_Net") and reg.create("my_Net", width=4) == ["net", 4]
    with pytest.raises(ConfigError, match="did you mean 'my_Net'"):
        reg.get("olt")
    with pytest.raises(ConfigError, match="its parameters are width"):
        reg.create("my_Net", depth=2)
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("old", print)
    with pytest.raises(ConfigError, match="net names are letters, digits, '_' or '-'"):
        reg.register("a:b", print)
