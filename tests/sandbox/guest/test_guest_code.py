"""The guest code runs inside whatever image a user names: standard library only, nothing of the host package,
and nothing newer than the Python it promises (assistant/sandbox/guest/__init__.py)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from assistant.sandbox.bootstrap import BOOTSTRAP, MODULES, SERVER_SOURCE
from assistant.sandbox.guest import GUEST_PYTHON

GUEST = Path(__file__).resolve().parents[3] / "assistant" / "sandbox" / "guest"
FILES = sorted(p for p in GUEST.glob("*.py") if p.name != "__init__.py")
SIBLINGS = {p.stem for p in FILES}
# Standard modules and __future__ features younger than 3.6, with the version that brought them: an import of one
# fails on an older python3 (the parse below does not see these).
SINCE = {"dataclasses": (3, 7), "contextvars": (3, 7), "importlib.resources": (3, 7), "annotations": (3, 7),
         "importlib.metadata": (3, 8), "graphlib": (3, 9), "zoneinfo": (3, 9), "tomllib": (3, 11)}
# Standard names added after 3.7 that a guest file could reach for.
NEWER_NAMES = {"removeprefix", "removesuffix", "cached_property", "shlex.join", "math.prod", "math.isqrt",
               "functools.cache", "Literal", "Protocol", "TypedDict", "Final", "ParamSpec", "TypeAlias",
               "is_relative_to", ".readlink()", "with_stem", "zip(strict", "bit_count", "hardlink_to"}


def test_every_file_sent_into_the_sandbox_is_guest_code():
    sent = {Path(SERVER_SOURCE).resolve()} | {Path(path).resolve() for _name, path in MODULES}
    assert sent == {p.resolve() for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_guest_files_parse_for_the_promised_python(path):
    ast.parse(path.read_text(), filename=str(path), feature_version=GUEST_PYTHON)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_guest_files_import_only_the_standard_library(path):
    imported, features = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: a relative import has no package inside the sandbox"
            imported.add(node.module)
            if node.module == "__future__":
                features |= {alias.name for alias in node.names}
    tops = {name.split(".")[0] for name in imported} - SIBLINGS - {"__future__"}
    outside = {name for name in tops if name not in sys.stdlib_module_names}
    assert outside == set(), f"{path.name} imports beyond the standard library: {outside}"
    newer = {name: SINCE[name] for name in imported | features if SINCE.get(name, (0,)) > GUEST_PYTHON}
    assert newer == {}, f"{path.name} needs a newer Python than the {GUEST_PYTHON} it promises: {newer}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_guest_files_use_nothing_newer_than_promised(path):
    text = path.read_text()
    found = sorted(name for name in NEWER_NAMES if name in text)
    assert found == [], f"{path.name} uses {found}, newer than Python {GUEST_PYTHON}"


def test_the_bootstrap_parses_for_python_3_6():
    ast.parse(BOOTSTRAP, feature_version=(3, 6))
