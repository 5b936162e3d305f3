"""The house rules that can be checked: file and function sizes, a warning-free package
configuration, and a README that says how to run the tests that need the shared data."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("r2", "train", "evaluate", "extract", "cache", "data")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60  # signature and body; the docstring is not counted
SOURCES = sorted(p.relative_to(REPO).as_posix() for pkg in PACKAGES
                 for p in (REPO / pkg).rglob("*.py"))  # fmt: skip


def _function_lengths(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if ast.get_docstring(node, clean=False) is not None:
                doc = node.body[0]
                n -= doc.end_lineno - doc.lineno + 1
            yield node.name, n


def test_source_files_stay_under_400_lines():
    long = {str(p.relative_to(REPO)): n for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES}  # fmt: skip
    assert not long, long


@pytest.mark.parametrize("name", SOURCES)
def test_functions_stay_under_60_lines(name):
    long = {f: n for f, n in _function_lengths(REPO / name) if n > MAX_FUNCTION_LINES}
    assert not long, long


def test_the_demo_command_is_short():
    lengths = dict(_function_lengths(REPO / "r2" / "cli.py"))
    assert lengths["demo_command"] <= MAX_FUNCTION_LINES


def test_package_configuration_has_no_deprecations():
    setuptools = pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(setuptools.dist.Distribution(), REPO / "pyproject.toml")
    deprecations = [str(w.message).splitlines()[0] for w in caught
                    if "deprecat" in w.category.__name__.lower()
                    or "deprecat" in str(w.message).lower()]  # fmt: skip
    assert not deprecations, deprecations


def test_readme_says_how_to_run_the_exactness_tests():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Exactness", 1)[1].split("\n## ", 1)[0]
    assert "../shared/testdata" in section and "skipped" in section
    assert "pytest" in section and "tests/test_parity.py" in section
