"""Packaging: metadata without deprecation warnings, every package in the wheel, the example configs
shipped (issue 14, part 8)."""

import subprocess
import sys
import tomllib
import warnings
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_metadata_applies_without_warnings(monkeypatch):
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert [str(w.message) for w in caught] == []
    assert _pyproject()["project"]["license"] == "Apache-2.0"  # an SPDX expression, not a table
    assert dist.get_name() == "secagg"


def test_package_list_holds_every_package_of_the_tree():
    import setuptools
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = set(setuptools.find_packages(where=str(ROOT), include=["secagg*", "dp*", "fl_core*"]))
    mapped = set(_pyproject()["tool"]["setuptools"]["package-dir"])
    assert listed == found | mapped
    assert mapped == {"fl_core.example_configs", "fl_core.docs"}


def test_examples_command_lists_and_copies_every_config(tmp_path, capsys):
    from fl_core.cli import main
    names = sorted(p.name for p in (ROOT / "examples").glob("*.toml"))
    assert main(["examples"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == names
    assert main(["examples", "--copy", str(tmp_path / "cfg")]) == 0
    assert sorted(p.name for p in (tmp_path / "cfg").iterdir()) == names
    assert main(["examples", "--copy", str(tmp_path / "cfg")]) == 2  # never replaces a file


@pytest.mark.slow
def test_the_wheel_carries_the_example_configs_and_docs(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "deprecated" not in (res.stdout + res.stderr).lower()
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for p in (ROOT / "examples").glob("*.toml"):
        assert f"fl_core/example_configs/{p.name}" in names
    for p in (ROOT / "docs").glob("*.md"):
        assert f"fl_core/docs/{p.name}" in names
