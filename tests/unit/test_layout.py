"""The import direction between the top-level packages: testbed serves tests and bench.

`bench` once imported `tests.support` while `tests` imported `bench`; the shared code
now lives in `testbed`, and these tests keep the cycle from coming back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


def imported_packages(source: str) -> set[str]:
    """The top-level package of every absolute import in `source`, nested ones included."""
    packages: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            packages.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            packages.add(node.module.split(".")[0])
    return packages


def importers_of(package: str, directory: str) -> list[str]:
    modules = sorted((PROJECT / directory).rglob("*.py"))
    assert modules, f"no modules under {directory}/"
    return [
        str(module.relative_to(PROJECT))
        for module in modules
        if package in imported_packages(module.read_text())
    ]


@pytest.mark.parametrize(
    "source",
    [
        "import tests.support.broker",
        "from tests.support.proxy import Proxy",
        "from tests import conftest",
        "def later() -> None:\n    import tests\n",
    ],
)
def test_every_form_of_import_is_seen(source: str) -> None:
    assert "tests" in imported_packages(source)


def test_a_relative_import_is_not_taken_for_a_top_level_package() -> None:
    assert imported_packages("from .tests import x") == set()


def test_bench_does_not_import_tests() -> None:
    assert importers_of("tests", "bench") == []


@pytest.mark.parametrize("package", ["tests", "bench"])
def test_testbed_imports_neither_tests_nor_bench(package: str) -> None:
    assert importers_of(package, "testbed") == []
