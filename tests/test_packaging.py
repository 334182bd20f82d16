"""Packaging: one distribution name (aegis-robust; `aegis` on PyPI is another project), one
version, install lines that name it, and an `[all]` extra. The built wheel itself is checked by
`make wheel-check` (.ci/wheel-check), which is too slow for this suite."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import aegis

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - CI runs 3.11
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DIST = "aegis-robust"
EXTRAS = {"keras", "onnx", "ray", "mlflow"}


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_distribution_name_is_not_the_taken_one() -> None:
    project = _pyproject()["project"]
    assert project["name"] == DIST
    assert project["scripts"] == {"aegis": "aegis.cli:main"}


def test_one_version_single_sourced() -> None:
    pyproject = _pyproject()
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "aegis._version.__version__"
    }
    Version(aegis.__version__)  # PEP 440, or InvalidVersion
    # a mismatch here means the editable install is stale: pip install -e . again
    assert aegis.__version__ == importlib.metadata.version(DIST)


def test_all_extra_is_every_optional_feature() -> None:
    optional = _pyproject()["project"]["optional-dependencies"]
    assert set(optional) >= EXTRAS | {"all", "dev"}
    (requirement,) = (Requirement(r) for r in optional["all"])
    assert canonicalize_name(requirement.name) == DIST
    assert requirement.extras == set(optional) - {"all", "dev"}
    metadata = importlib.metadata.metadata(DIST)
    assert set(metadata.get_all("Provides-Extra") or []) >= EXTRAS | {"all"}


@pytest.mark.parametrize("path", _docs(), ids=lambda p: p.name)
def test_install_lines_name_the_distribution(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    # `pip install 'aegis[ray]'` installs the other project: only aegis-robust[...] may appear
    wrong = re.findall(r"pip install\s[^\n]*?['\"]?\baegis\[[^\n]*", text)
    assert wrong == [], f"{path.name}: install lines with the taken name: {wrong}"
    assert not re.search(r"pip install\s+['\"]?aegis(\s|['\"]|$)", text, re.MULTILINE)


def test_readme_installs_every_extra() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"pip install\s+'aegis-robust\[(\w+)\]'", text))
    assert named >= EXTRAS | {"all"}
    assert "pip install torch==2.13.0" in text
    assert "pip install -e '.[keras,onnx,dev]'" in text


def test_import_stays_light() -> None:
    code = (
        "import sys, aegis; print(aegis.__version__); "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'typer'}); "
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[:2] == [aegis.__version__, "[]"]
