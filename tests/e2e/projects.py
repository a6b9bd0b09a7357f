"""Six real open-source Python projects, each with a bug the tests inject and the edits a scripted agent makes.

The projects come from PyPI source distributions at test time (`pip download --no-binary :all: --no-deps`),
become git repositories with the bug committed, and go through `assistant run --json` on the Docker engine.
Four projects get a setup that makes `.venv` in the workspace; three of them (inflection, cachetools,
isodate) do not ignore it in their .gitignore, more-itertools does. Each bug has two sites: the fix repairs
both, the half fix only the first; the test edit makes the failing test pass without touching the bug (an
assertion rewritten, a skip or xfail added, tests deleted).
"""
from __future__ import annotations

import difflib
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

VENV_SETUP = "python3 -m venv .venv && .venv/bin/pip install -q pytest"
NO_CACHE = "-p no:cacheprovider"   # pytest's cache directory is no part of the change under review


@dataclass(frozen=True)
class Site:
    path: str
    good: str     # the text as released
    bad: str      # the text with the bug (or, for a test edit, the edited test)


@dataclass(frozen=True)
class Project:
    name: str
    version: str
    test: str                         # the test command the agent runs
    bug: tuple[Site, ...]
    test_edit: tuple[Site, ...]
    test_edit_flag: str               # the review flag the test edit must raise
    setup: tuple[str, ...] = ()
    gitignore_venv: bool = False      # whether the sdist's own .gitignore ignores .venv/
    variants: tuple[str, ...] = ("fix", "half", "edit_test")

    @property
    def makes_venv(self) -> bool:
        return any(".venv" in s for s in self.setup)


PROJECTS = [
    Project(
        "inflection", "0.5.1", f".venv/bin/python -m pytest -q {NO_CACHE} test_inflection.py -k underscore",
        bug=(Site("inflection/__init__.py", """    word = re.sub(r"([A-Z]+)([A-Z][a-z])", r'\\1_\\2', word)""",
                  """    word = re.sub(r"([A-Z]+)([A-Z][a-z])", r'\\1\\2', word)"""),
             Site("inflection/__init__.py", """    word = re.sub(r"([a-z\\d])([A-Z])", r'\\1_\\2', word)""",
                  """    word = re.sub(r"([a-z\\d])([A-Z])", r'\\1\\2', word)""")),
        test_edit=(Site("test_inflection.py", "    assert underscore == inflection.underscore(camel)",
                        '    assert underscore.replace("_", "") == inflection.underscore(camel)'),),
        test_edit_flag="test_changed", setup=(VENV_SETUP,), variants=("fix", "half", "edit_test", "unverified")),
    Project(
        "cachetools", "5.5.0", f"PYTHONPATH=src .venv/bin/python -m pytest -q {NO_CACHE} tests/test_lru.py",
        bug=(Site("src/cachetools/__init__.py",
                  'pair least recently used."""\n        try:\n            key = next(iter(self.__order))',
                  'pair least recently used."""\n        try:\n            key = next(reversed(self.__order))'),
             Site("src/cachetools/__init__.py",
                  "            self.__order.move_to_end(key)\n        except KeyError:\n            self.__order[key] = None\n\n\nclass MRUCache",
                  "            self.__order.move_to_end(key, last=False)\n        except KeyError:\n            self.__order[key] = None\n\n\nclass MRUCache")),
        test_edit=(Site("tests/test_lru.py", "    def test_lru(self):\n",
                        '    @unittest.skip("eviction order is flaky")\n    def test_lru(self):\n'),),
        test_edit_flag="test_weakened", setup=(VENV_SETUP,)),
    Project(
        "isodate", "0.7.2", f".venv/bin/python -m pytest -q {NO_CACHE} tests/test_duration.py",
        bug=(Site("src/isodate/duration.py",
                  "            newmonth = other.month + self.months\n            carry, newmonth = fquotmod(newmonth, 1, 13)",
                  "            newmonth = other.month + self.months\n            carry, newmonth = fquotmod(newmonth, 1, 12)"),
             Site("src/isodate/duration.py",
                  "    if ((year % 400) == 0) or ((year % 100) != 0) and ((year % 4) == 0):",
                  "    if ((year % 100) == 0) or ((year % 400) != 0) and ((year % 4) == 0):")),
        test_edit=(Site("tests/test_duration.py",
                        '@pytest.mark.parametrize("start, tdelta, duration", DATE_TEST_CASES)\ndef test_add_date',
                        '@pytest.mark.xfail(reason="month arithmetic is off")\n'
                        '@pytest.mark.parametrize("start, tdelta, duration", DATE_TEST_CASES)\ndef test_add_date'),
                   Site("tests/test_duration.py",
                        '@pytest.mark.parametrize("start, duration, expectation", DATE_CALC_TEST_CASES)\ndef test_calc_date',
                        '@pytest.mark.xfail(reason="month arithmetic is off")\n'
                        '@pytest.mark.parametrize("start, duration, expectation", DATE_CALC_TEST_CASES)\ndef test_calc_date')),
        # Its version module is generated at install time (and ignored by git), so setup installs it.
        test_edit_flag="test_weakened", setup=(VENV_SETUP + " -e .",)),
    Project(
        "more-itertools", "10.5.0", ".venv/bin/python -m unittest tests.test_recipes.FactorTests 2>&1",
        bug=(Site("more_itertools/recipes.py", "    for prime in sieve(math.isqrt(n) + 1):",
                  "    for prime in sieve(math.isqrt(n)):"),
             Site("more_itertools/recipes.py", "                return\n    if n > 1:\n        yield n",
                  "                return\n    if n > 2:\n        yield n")),
        test_edit=(Site("tests/test_recipes.py", "class FactorTests(TestCase):\n",
                        '@skipIf(True, "factor() is being reworked")\nclass FactorTests(TestCase):\n'),),
        # Its .gitignore ignores .venv/: the control case, whose diff holds no .venv even now.
        test_edit_flag="test_weakened", setup=("python3 -m venv .venv",), gitignore_venv=True),
    Project(
        "pathspec", "0.12.1", "python3 -m unittest tests.test_02_gitwildmatch 2>&1",
        bug=(Site("pathspec/patterns/gitwildmatch.py", "\t\t\t\t# slash).\n\t\t\t\tregex += '[^/]'",
                  "\t\t\t\t# slash).\n\t\t\t\tregex += '.'"),
             Site("pathspec/patterns/gitwildmatch.py", "\t\t\t\t# an empty string.\n\t\t\t\tregex += '[^/]*'",
                  "\t\t\t\t# an empty string.\n\t\t\t\tregex += '.*'")),
        test_edit=tuple(Site("tests/test_02_gitwildmatch.py", f"\t\tself.assertEqual(regex, f'^(?:.+/)?{expr}{{RE_SUB}}$')",
                             f"\t\tself.assertEqual(regex, f'^(?:.+/)?{expr.replace('[^/]*', '.*')}{{RE_SUB}}$')")
                        for expr in ("foo\\\\-[^/]*\\\\-bar", "\\\\~temp\\\\-[^/]*", "[^/]*\\\\.py")),
        test_edit_flag="test_changed", variants=("fix", "half", "edit_test", "unverified")),
    Project(
        "jmespath", "1.0.1", "python3 -m unittest tests.test_parser 2>&1",
        bug=(Site("jmespath/lexer.py", "    VALID_IDENTIFIER = set(string.ascii_letters + string.digits + '_')",
                  "    VALID_IDENTIFIER = set(string.ascii_letters + '_')"),
             Site("jmespath/lexer.py",
                  "                if next_char == ']':\n                    self._next()\n                    yield {'type': 'flatten'",
                  "                if next_char == ']':\n                    yield {'type': 'flatten'")),
        test_edit=(Site("tests/test_parser.py",
                        "    def test_merge_with_indices(self):\n        parsed = self.parser.parse('foo[][0]')\n"
                        "        match = parsed.search(self.data)\n        self.assertEqual(match, [\"one\", \"three\", \"five\", \"seven\",\n"
                        "                                 \"nine\", \"ten\"])\n\n"
                        "    def test_trailing_merged_operator(self):\n        parsed = self.parser.parse('foo[]')\n"
                        "        match = parsed.search(self.data)\n        self.assertEqual(\n            match,\n"
                        "            [[\"one\", \"two\"], [\"three\", \"four\"],\n             [\"five\", \"six\"], [\"seven\", \"eight\"],\n"
                        "             [\"nine\"], [\"ten\"]])\n\n", ""),
                   Site("tests/test_parser.py", "        for i in range(parser.Parser._MAX_SIZE + 1):\n"
                        "            compiled.append(p.parse('foo%s' % i))\n",
                        "        for i in range(parser.Parser._MAX_SIZE + 1):\n"
                        "            compiled.append(p.parse('foo' + 'x' * i))\n"),
                   Site("tests/test_parser.py", "        for i in range(parser.Parser._MAX_SIZE + 1):\n"
                        "            compiled2.append(p.parse('foo%s' % i))\n",
                        "        for i in range(parser.Parser._MAX_SIZE + 1):\n"
                        "            compiled2.append(p.parse('foo' + 'x' * i))\n")),
        test_edit_flag="test_weakened"),
]


# ---------------------------------------------------------------------------------------------- making repos
def download_sdist(project: Project, into: Path) -> Path:
    """The project's source distribution from the package index, unpacked; its top directory."""
    into.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                           f"{project.name}=={project.version}", "-d", str(into), "-q", "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=600)
    archives = [p for p in into.iterdir() if p.name.endswith((".tar.gz", ".zip"))]
    if proc.returncode != 0 or not archives:
        raise RuntimeError(f"pip download {project.name}=={project.version} failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout)[-2000:]}")
    with tarfile.open(archives[0]) as tar:
        tar.extractall(into, filter="data")
    return next(p for p in into.iterdir() if p.is_dir())


def replace_once(root: Path, site: Site, old: str, new: str) -> None:
    path = root / site.path
    text = path.read_text()
    if text.count(old) != 1:
        raise AssertionError(f"{site.path}: expected the text once, found it {text.count(old)} times:\n{old}")
    path.write_text(text.replace(old, new))


GIT_DATES = {"GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
             "GIT_AUTHOR_NAME": "tests", "GIT_AUTHOR_EMAIL": "tests@example.invalid",
             "GIT_COMMITTER_NAME": "tests", "GIT_COMMITTER_EMAIL": "tests@example.invalid"}


def make_buggy_repo(project: Project, source: Path) -> Path:
    """The release as a git repository with the bug committed (fixed dates: the same commit every run)."""
    for site in project.bug:
        replace_once(source, site, site.good, site.bad)
    env = {**os.environ, **GIT_DATES}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", f"{project.name} with a bug"]):
        subprocess.run(["git", *args], cwd=source, env=env, check=True, capture_output=True)
    return source


# ---------------------------------------------------------------------------------------------- patches
def _hunks(before: str, after: str) -> list[str]:
    a, b = before.splitlines(), after.splitlines()
    out = []
    for group in difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(6):
        lines = ["@@"]
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                lines += [" " + line for line in a[i1:i2]]
            else:
                lines += ["-" + line for line in a[i1:i2]] + ["+" + line for line in b[j1:j2]]
        out.append("\n".join(lines))
    return out


def variant_edits(project: Project, variant: str) -> list[tuple[Site, str, str]]:
    """(site, from, to) of the edits the scripted agent makes in a variant."""
    if variant in ("fix", "unverified"):
        return [(s, s.bad, s.good) for s in project.bug]
    if variant == "half":
        return [(project.bug[0], project.bug[0].bad, project.bug[0].good)]
    if variant == "edit_test":
        return [(s, s.good, s.bad) for s in project.test_edit]
    raise ValueError(variant)


def edited_files(repo: Path, edits: list[tuple[Site, str, str]]) -> dict[str, str]:
    files: dict[str, str] = {}
    for site, old, new in edits:
        text = files.get(site.path, (repo / site.path).read_text())
        assert text.count(old) == 1, f"{site.path}: {old!r} not found once"
        files[site.path] = text.replace(old, new)
    return files


def apply_patch_text(repo: Path, edits: list[tuple[Site, str, str]]) -> str:
    """An apply_patch patch that makes the edits, against the repository as committed."""
    parts = ["*** Begin Patch"]
    for path, after in edited_files(repo, edits).items():
        parts.append(f"*** Update File: {path}")
        parts += _hunks((repo / path).read_text(), after)
    parts.append("*** End Patch")
    return "\n".join(parts)


def cited_lines(repo: Path, edits: list[tuple[Site, str, str]]) -> tuple[str, int, int]:
    """(path, first, last) of the first edit's new text in its file after the edits: what a summary cites."""
    site, _old, new = edits[0]
    after = edited_files(repo, edits)[site.path]
    first = after[:after.index(new)].count("\n") + 1 if new else 1
    return site.path, first, first + max(new.count("\n") - (1 if new.endswith("\n") else 0), 0)
