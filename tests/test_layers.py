"""The package's layers hold (import-linter), and every module has its place in them."""

from __future__ import annotations

import pkgutil
from pathlib import Path

from importlinter.api import read_configuration
from importlinter.cli import lint_imports

import orchestrator

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "pyproject.toml")


def _layered_modules() -> set[str]:
    contracts = read_configuration(CONFIG)["contracts_options"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    names = set()
    for layer in layers:
        for name in layer.replace("|", ":").split(":"):
            names.add(name.strip().strip("()"))
    return names


def _package_modules() -> set[str]:
    found = set()
    for info in pkgutil.walk_packages(orchestrator.__path__, "orchestrator."):
        if ".migrations" not in info.name:
            found.add(info.name)
    return found


def test_nothing_imports_a_layer_above_its_own() -> None:
    assert lint_imports(config_filename=CONFIG, no_cache=True, no_logo=True) == 0


def test_every_module_is_placed_in_a_layer() -> None:
    layered = _layered_modules()
    unplaced = {
        name
        for name in _package_modules()
        if not any(name == layer or name.startswith(layer + ".") for layer in layered)
        and not any(layer.startswith(name + ".") for layer in layered)  # a package of them
    }
    assert unplaced == set(), "add these to [tool.importlinter] in pyproject.toml"
