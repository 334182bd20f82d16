"""Attack aliases (the seed's strategy names) and the text of `aegis attacks` / `aegis datasets`."""

from __future__ import annotations

import pickle

import pytest
import torch

from aegis.api import run_attack
from aegis.attacks.pgd import PGD
from aegis.cli.listing import attacks_text, datasets_text, defenses_text
from aegis.errors import ConfigError
from aegis.io.data import list_datasets
from aegis.model import Classifier
from aegis.registry import (
    AliasSpec,
    EnsembleSpec,
    create,
    create_all,
    expand,
    get_spec,
    list_aliases,
    list_attacks,
    list_ensembles,
    register,
    register_alias,
    register_ensemble,
)
from aegis.threat import ThreatModel

ALIASES = [a.name for a in list_aliases()]


def test_sparse_gradient_is_pgd_with_l1() -> None:
    (attack,) = create_all("sparse-gradient", norm="l1")
    assert isinstance(attack, PGD) and attack.registry_name == "pgd"
    assert attack.norms == ("l1",)
    assert (attack.steps, attack.sparsity, attack.random_start, attack.restarts) == (
        40,
        0.99,
        True,
        1,
    )
    (tuned,) = create_all("sparse-gradient", norm="l1", sparsity=0.9, steps=5)
    assert (tuned.sparsity, tuned.steps) == (0.9, 5)  # type: ignore[attr-defined]
    assert expand("sparse-gradient,fgsm", "l1") == [("sparse-gradient", {}), ("fgsm", {})]


@pytest.mark.parametrize("norm", ["linf", "l2", "l0"])
def test_sparse_gradient_refuses_other_norms_in_one_line(norm: str) -> None:
    with pytest.raises(ConfigError, match="--norm l1") as err:
        create_all("sparse-gradient", norm=norm)
    assert "\n" not in str(err.value) and norm in str(err.value)


def test_sparse_gradient_built_without_a_norm_refuses_linf_when_called(
    param_free: Classifier, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    attack = create("sparse-gradient", steps=2)
    with pytest.raises(ConfigError, match="--norm l1"):
        attack(param_free, x[:4], y[:4], ThreatModel("linf", 0.1))


def test_random_gradient_has_random_start_and_restarts() -> None:
    (attack,) = create_all("random-gradient", norm="linf")
    assert isinstance(attack, PGD) and attack.registry_name == "pgd"
    assert attack.random_start is True and attack.restarts == 5
    (more,) = create_all("random-gradient", norm="l2", restarts=9)
    assert more.restarts == 9  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="always uses random_start=True"):
        create_all("random-gradient", norm="linf", random_start=False)
    with pytest.raises(ConfigError, match="always uses random_start=True"):
        create("random-gradient", random_start="false")


def test_alias_results_name_the_attack_and_the_alias(
    param_free: Classifier, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    pairs = (x[:12].numpy(), y[:12].numpy())
    run = run_attack(param_free, pairs, attack="sparse-gradient", norm="l1", eps=2.0, steps=3)
    assert run.results["config"]["attack"]["name"] == "pgd"
    assert run.results["config"]["attack"]["alias"] == "sparse-gradient"
    suite = create_all("random-gradient,fgsm", norm="linf")
    assert suite[0].to_dict()["alias"] == "random-gradient"
    assert "alias" not in suite[1].to_dict()


def test_alias_attacks_pickle_and_compare() -> None:
    attack = create("random-gradient", steps=7)
    again = pickle.loads(pickle.dumps(attack))
    assert again == attack and type(again) is type(attack)
    assert attack != PGD(steps=7, restarts=5)  # the alias is part of what it is


def test_aliases_resolve_and_hint() -> None:
    assert get_spec("sparse-gradient").name == "pgd"
    with pytest.raises(ConfigError, match="did you mean 'sparse-gradient'"):
        create_all("sparse-gradiant", norm="l1")
    with pytest.raises(ConfigError, match="did you mean 'random-gradient'"):
        create("random-gradent")


def test_alias_names_are_unique_and_targets_fit() -> None:
    attacks = {s.name: s for s in list_attacks()}
    suites = {s.name for s in list_ensembles()}
    for alias in list_aliases():
        assert alias.name not in attacks and alias.name not in suites
        assert set(alias.norms) <= set(attacks[alias.target].norms)
        assert set(alias.fixed) | set(alias.defaults) <= set(attacks[alias.target].parameters())
    with pytest.raises(ConfigError, match="registered twice"):
        register_alias(AliasSpec("pgd", "fgsm", ("linf",), ""))
    with pytest.raises(ConfigError, match="registered twice"):
        register_alias(AliasSpec("standard", "pgd", ("linf",), ""))
    with pytest.raises(ConfigError, match="registered twice"):
        register_ensemble(EnsembleSpec("sparse-gradient", {"linf": (("fgsm", {}),)}, "", ""))
    with pytest.raises(ConfigError, match="registered twice"):
        register("random-gradient", norms=("linf",), paper="")(PGD)


@pytest.mark.parametrize("width", [80, 60])
@pytest.mark.parametrize("wide", [False, True])
def test_attacks_text_fits_the_width(width: int, wide: bool) -> None:
    text = attacks_text(width=width, wide=wide)
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert not too_long, too_long


@pytest.mark.parametrize("wide", [False, True])
def test_attacks_text_names_every_attack_suite_and_alias(wide: bool) -> None:
    text = attacks_text(wide=wide)
    starts = {line.split()[0].rstrip(":") for line in text.splitlines() if line.strip()}
    for name in [s.name for s in list_attacks()] + [s.name for s in list_ensembles()] + ALIASES:
        assert name in starts, name
    if not wide:
        assert "pgd (aliases: random-gradient, sparse-gradient)" in text
        assert "steps=40" in text and "step_size=auto" in text  # defaults are shown
        assert "queries only" in text and "minimal-norm: yes" in text


def test_wide_puts_one_attack_per_line() -> None:
    lines = attacks_text(width=200, wide=True).splitlines()
    for spec in list_attacks():
        rows = [line for line in lines if line.split()[:1] == [spec.name]]
        assert len(rows) == 1, spec.name
        assert spec.summary in rows[0] and spec.paper in rows[0]  # room for all at 200
    narrow = attacks_text(width=80, wide=True).splitlines()
    assert sum(line.split()[:1] == ["pgd"] for line in narrow) == 1


def test_attacks_text_pattern() -> None:
    text = attacks_text(pattern="*gradient*")
    assert "sparse-gradient" in text and "random-gradient" in text
    assert "apgd-ce" not in text and "standard" not in text
    assert "apgd-ce" in attacks_text(pattern="apgd*")
    assert "No attack, suite or alias matches" in attacks_text(pattern="nothing-like-this")


@pytest.mark.parametrize("width", [80, 60])
def test_datasets_text_fits_the_width_and_names_each(width: int) -> None:
    text = datasets_text(width=width)
    assert all(len(line) <= width for line in text.splitlines())
    for row in list_datasets():
        assert f"\n{row['name']}\n" in text
    assert "size: 5,000 (train 4,000, test 1,000)" in text
    assert "shape: 1x28x28" in text and "{" not in text  # no raw dicts


@pytest.mark.parametrize("width", [80, 60])
def test_defenses_text_fits_the_width_and_names_each(width: int) -> None:
    from aegis.defenses.preprocessing import list_preprocessors

    text = defenses_text(width)
    assert all(len(line) <= width for line in text.splitlines())
    for spec in list_preprocessors():
        assert spec.name in text
    assert "BPDA" in text and "EOT" in text
