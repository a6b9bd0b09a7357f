"""Which setup commands a job runs: the request's, else the repo's script, else what the repo looks like; and
which ecosystems (toolchains) and test commands the repository's files show.

Detection reads only the committed top level (and the manifests it finds there): a monorepo whose packages
live in subfolders names its setup in .assistant/setup.sh or the request, its tests in AGENTS.md."""

from __future__ import annotations

import configparser
import fnmatch
import json
import re
import shlex
import tomllib
from typing import Protocol

from .base import AGENT_VENV

REPO_SCRIPT = ".assistant/setup.sh"
TEST_EXTRAS = ("test", "tests", "testing", "dev")


class RepoFiles(Protocol):
    """The repository as it was committed (read from the host's mirror, never from a workspace)."""

    def top_level(self) -> list[str]:
        """Top-level names, directories with a trailing slash."""

    def read(self, path: str) -> str | None: ...


class KnownFiles:
    """A RepoFiles that lists the top level once and reads each file once, and answers "absent" without asking
    git for a path whose top-level name is not there: detection asks about many files, most of them missing, on
    the way to a job's first command."""

    def __init__(self, repo: RepoFiles):
        self._repo = repo
        self._top: list[str] | None = None
        self._texts: dict[str, str | None] = {}

    def __getattr__(self, name):  # the rest of the source (commit, bundle, ...) as it is
        return getattr(self._repo, name)

    def top_level(self) -> list[str]:
        if self._top is None:
            self._top = self._repo.top_level()
        return self._top

    def read(self, path: str) -> str | None:
        if path not in self._texts:
            head, sep, _ = path.partition("/")
            present = (head + sep) in self.top_level()
            self._texts[path] = self._repo.read(path) if present else None
        return self._texts[path]


def setup_commands(repo: RepoFiles, requested: list[str] | None) -> list[str]:
    if requested is not None:
        return [command for command in requested if command.strip()]
    if repo.read(REPO_SCRIPT) is not None:
        return [f"bash {REPO_SCRIPT}"]
    return detect_setup(repo)


def detect_setup(repo: RepoFiles) -> list[str]:
    commands: list[str] = []
    files = {name for name in repo.top_level() if not name.endswith("/")}
    requirements = sorted(name for name in files if fnmatch.fnmatch(name, "*requirements*.txt"))
    installable = any(name in files for name in ("pyproject.toml", "setup.py", "setup.cfg"))
    if installable or requirements:
        commands.append(f"python3 -m venv {AGENT_VENV}")
        commands += [f"pip install -r {shlex.quote(name)}" for name in requirements]
        if installable:
            extra = _test_extra(repo)
            target = f".[{extra}]" if extra else "."
            commands.append(f"pip install -e {shlex.quote(target)}")
    for toolchain in ecosystems(repo):
        commands += _SETUP[toolchain](repo, files)
    return commands


# The marker files of each ecosystem whose toolchain is not in the default image (Python is).
MARKERS: dict[str, tuple[str, ...]] = {
    "node": ("package.json", "package-lock.json", "npm-shrinkwrap.json"),
    "go": ("go.mod",),
    "rust": ("Cargo.toml",),
    "java": ("pom.xml", "build.gradle", "build.gradle.kts", "settings.gradle", "settings.gradle.kts"),
    "ruby": ("Gemfile",),
    "php": ("composer.json",),
}
NPM_DEFAULT_TEST = "no test specified"  # what `npm init` writes as the test script


def ecosystems(repo: RepoFiles) -> list[str]:
    """The toolchains the repository's top-level files call for, in a fixed order."""
    files = {name for name in repo.top_level() if not name.endswith("/")}
    return [name for name, markers in MARKERS.items() if files & set(markers)]


def _node_setup(repo: RepoFiles, files: set[str]) -> list[str]:
    if files & {"package-lock.json", "npm-shrinkwrap.json"}:
        return ["npm ci"]
    return ["npm install"]  # no lock file to follow (yarn and pnpm are not in the image): npm resolves one


def _go_setup(repo: RepoFiles, files: set[str]) -> list[str]:
    requires = re.search(r"^\s*require\b", repo.read("go.mod") or "", re.MULTILINE)
    # Dependencies download with network; building once fills the build cache the setup cache keeps.
    return (["go mod download"] if requires else []) + ["go build ./..."]


def _rust_setup(repo: RepoFiles, files: set[str]) -> list[str]:
    return ["cargo fetch", "cargo test --no-run"]


GRADLE_KOTLIN = ("build.gradle.kts", "settings.gradle.kts")
# Setup's one command for a Kotlin-DSL build without a wrapper: the image's Gradle (Debian's 4.4.1) has no Kotlin
# DSL and reads neither file (it would fail with "Task 'testClasses' not found"), so the job stops saying why.
NO_GRADLE_FOR_KOTLIN = ("echo " + shlex.quote(
    "This repository builds with Gradle's Kotlin DSL (build.gradle.kts or settings.gradle.kts) and has no "
    "./gradlew. The sandbox's Gradle is Debian's 4.4.1, which reads only Groovy build scripts (build.gradle). "
    "Commit the Gradle wrapper (gradlew and gradle/wrapper/), or give setup commands with --setup or "
    ".assistant/setup.sh.") + " >&2; exit 2")


def _java_setup(repo: RepoFiles, files: set[str]) -> list[str]:
    if "pom.xml" in files:
        return ["mvn -B -q test-compile"]
    if "gradlew" in files:
        return ["./gradlew --no-daemon testClasses"]
    if files & set(GRADLE_KOTLIN):
        return [NO_GRADLE_FOR_KOTLIN]
    return ["gradle --no-daemon testClasses"]


def _ruby_setup(repo: RepoFiles, files: set[str]) -> list[str]:
    return ["bundle install"]


def _php_setup(repo: RepoFiles, files: set[str]) -> list[str]:
    return ["composer install --no-interaction --no-progress"]


_SETUP = {"node": _node_setup, "go": _go_setup, "rust": _rust_setup, "java": _java_setup, "ruby": _ruby_setup,
          "php": _php_setup}


def detect_test_commands(repo: RepoFiles) -> list[str]:
    """The commands that run the repository's tests, as its manifests tell (the job's agent is told them, and
    runs of them count as test runs); AGENTS.md, where it names others, is what the agent follows."""
    files = {name for name in repo.top_level() if not name.endswith("/")}
    folders = {name.rstrip("/") for name in repo.top_level() if name.endswith("/")}
    found: list[str] = []
    if _uses_pytest(repo, files):
        found.append("python3 -m pytest")
    for toolchain in ecosystems(repo):
        found += _TESTS[toolchain](repo, files, folders)
    return found


def _uses_pytest(repo: RepoFiles, files: set[str]) -> bool:
    if files & {"pytest.ini", "conftest.py"}:
        return True
    if "[tool.pytest" in (repo.read("pyproject.toml") or "") or "[tool:pytest]" in (repo.read("setup.cfg") or ""):
        return True
    return "[pytest]" in (repo.read("tox.ini") or "")


def _node_tests(repo: RepoFiles, files: set[str], folders: set[str]) -> list[str]:
    try:
        scripts = json.loads(repo.read("package.json") or "{}").get("scripts") or {}
    except (ValueError, AttributeError):
        return []
    test = scripts.get("test") if isinstance(scripts, dict) else None
    return ["npm test"] if isinstance(test, str) and test.strip() and NPM_DEFAULT_TEST not in test else []


def _java_tests(repo: RepoFiles, files: set[str], folders: set[str]) -> list[str]:
    if "pom.xml" in files:
        return ["mvn -B test"]
    if "gradlew" in files:
        return ["./gradlew --no-daemon test"]
    return [] if files & set(GRADLE_KOTLIN) else ["gradle --no-daemon test"]


def _ruby_tests(repo: RepoFiles, files: set[str], folders: set[str]) -> list[str]:
    if "spec" in folders:
        return ["bundle exec rspec"]
    return ["bundle exec rake test"] if "Rakefile" in files else []


def _php_tests(repo: RepoFiles, files: set[str], folders: set[str]) -> list[str]:
    try:
        manifest = json.loads(repo.read("composer.json") or "{}")
    except ValueError:
        return []
    if not isinstance(manifest, dict):
        return []
    if isinstance(manifest.get("scripts"), dict) and "test" in manifest["scripts"]:
        return ["composer test"]
    dev = manifest.get("require-dev") if isinstance(manifest.get("require-dev"), dict) else {}
    return ["vendor/bin/phpunit"] if "phpunit/phpunit" in dev else []


_TESTS = {"node": _node_tests, "go": lambda *_: ["go test ./..."], "rust": lambda *_: ["cargo test"],
          "java": _java_tests, "ruby": _ruby_tests, "php": _php_tests}


def _test_extra(repo: RepoFiles) -> str | None:
    """The repo's test extra (pip only warns about a missing one, so it must be looked up)."""
    declared: set[str] = set()
    pyproject = repo.read("pyproject.toml")
    if pyproject is not None:
        try:
            data = tomllib.loads(pyproject)
        except tomllib.TOMLDecodeError:
            data = {}
        declared |= set(data.get("project", {}).get("optional-dependencies", {}) or {})
        poetry = data.get("tool", {}).get("poetry", {})
        declared |= set(poetry.get("extras", {}) or {})
    setup_cfg = repo.read("setup.cfg")
    if setup_cfg is not None:
        parser = configparser.ConfigParser()
        try:
            parser.read_string(setup_cfg)
            if parser.has_section("options.extras_require"):
                declared |= set(parser.options("options.extras_require"))
        except configparser.Error:
            pass
    text = repo.read("setup.py")
    if text is not None:
        declared |= {name for name in TEST_EXTRAS if f'"{name}"' in text or f"'{name}'" in text}
    return next((name for name in TEST_EXTRAS if name in declared), None)
