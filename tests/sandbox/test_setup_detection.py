"""Which setup commands a repository gets when the request names none."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from assistant.sandbox.base import SandboxError
from assistant.sandbox.image_choice import repo_sandbox_table
from assistant.sandbox.setup_commands import NO_GRADLE_FOR_KOTLIN, KnownFiles, detect_test_commands, ecosystems
from assistant.sandbox.setup_commands import setup_commands as detect
from assistant.sandbox.toolchains import build_script, resolve, toolchain_image_name


class Files:
    """A committed tree as setup detection sees it (the host mirror, in the product)."""

    def __init__(self, root: Path):
        self.root = root

    def top_level(self) -> list[str]:
        return [p.name + "/" if p.is_dir() else p.name for p in self.root.iterdir()]

    def read(self, path: str) -> str | None:
        target = self.root / path
        return target.read_text() if target.is_file() else None


def setup_commands(root: Path, requested):
    return detect(Files(root), requested)


def write(root, files):
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


def test_request_wins_over_everything(tmp_path):
    write(tmp_path, {".assistant/setup.sh": "true", "pyproject.toml": ""})
    assert setup_commands(tmp_path, ["make deps", " "]) == ["make deps"]
    assert setup_commands(tmp_path, []) == []


def test_repo_script_wins_over_detection(tmp_path):
    write(tmp_path, {".assistant/setup.sh": "true", "package-lock.json": "{}"})
    assert setup_commands(tmp_path, None) == ["bash .assistant/setup.sh"]


def test_python_project_gets_a_venv_and_its_test_extra(tmp_path):
    write(tmp_path, {"pyproject.toml": "[project]\nname='x'\n[project.optional-dependencies]\ndocs=['a']\ntest=['b']\n",
                     "requirements-dev.txt": "pytest\n"})
    assert setup_commands(tmp_path, None) == [
        "python3 -m venv /home/agent/.venv",
        "pip install -r requirements-dev.txt",
        "pip install -e '.[test]'",
    ]


def test_python_project_without_a_test_extra_installs_plain(tmp_path):
    write(tmp_path, {"setup.cfg": "[options.extras_require]\ndev = black\n", "setup.py": "from setuptools import setup\n"})
    assert setup_commands(tmp_path, None)[-1] == "pip install -e '.[dev]'"
    write(tmp_path, {"setup.cfg": "[metadata]\nname = x\n"})
    assert setup_commands(tmp_path, None)[-1] == "pip install -e ."


def test_node_project_with_a_lockfile_gets_npm_ci(tmp_path):
    write(tmp_path, {"package.json": "{}", "package-lock.json": "{}"})
    assert setup_commands(tmp_path, None) == ["npm ci"]


def test_node_project_without_a_lockfile_gets_npm_install_and_its_test_script(tmp_path):
    write(tmp_path, {"package.json": '{"scripts": {"test": "tape test/*.js"}}', "yarn.lock": ""})
    assert setup_commands(tmp_path, None) == ["npm install"]
    assert detect_test_commands(Files(tmp_path)) == ["npm test"]
    write(tmp_path, {"package.json": '{"scripts": {"test": "echo \\"Error: no test specified\\" && exit 1"}}'})
    assert detect_test_commands(Files(tmp_path)) == []  # npm init's placeholder runs no tests
    write(tmp_path, {"package.json": "not json"})
    assert detect_test_commands(Files(tmp_path)) == []


@pytest.mark.parametrize("files,toolchains,setup,tests", [
    ({"go.mod": "module example.org/x\n\ngo 1.19\n"}, ["go"], ["go build ./..."], ["go test ./..."]),
    ({"go.mod": "module example.org/x\nrequire example.org/y v1.0.0\n", "go.sum": ""}, ["go"],
     ["go mod download", "go build ./..."], ["go test ./..."]),
    ({"Cargo.toml": "[package]\nname = 'x'\n"}, ["rust"], ["cargo fetch", "cargo test --no-run"], ["cargo test"]),
    ({"pom.xml": "<project/>"}, ["java"], ["mvn -B -q test-compile"], ["mvn -B test"]),
    ({"build.gradle": "", "gradlew": ""}, ["java"], ["./gradlew --no-daemon testClasses"],
     ["./gradlew --no-daemon test"]),
    ({"build.gradle": "", "settings.gradle": ""}, ["java"], ["gradle --no-daemon testClasses"],
     ["gradle --no-daemon test"]),
    ({"build.gradle.kts": "", "settings.gradle.kts": "", "gradlew": ""}, ["java"],
     ["./gradlew --no-daemon testClasses"], ["./gradlew --no-daemon test"]),
    ({"Gemfile": "", "Rakefile": ""}, ["ruby"], ["bundle install"], ["bundle exec rake test"]),
    ({"Gemfile": "", "spec/a_spec.rb": ""}, ["ruby"], ["bundle install"], ["bundle exec rspec"]),
    ({"composer.json": '{"require-dev": {"phpunit/phpunit": "^10"}}'}, ["php"],
     ["composer install --no-interaction --no-progress"], ["vendor/bin/phpunit"]),
    ({"composer.json": '{"scripts": {"test": "pest"}}'}, ["php"],
     ["composer install --no-interaction --no-progress"], ["composer test"]),
])
def test_each_ecosystem_gets_its_toolchain_setup_and_tests(tmp_path, files, toolchains, setup, tests):
    write(tmp_path, files)
    assert ecosystems(Files(tmp_path)) == toolchains
    assert setup_commands(tmp_path, None) == setup
    assert detect_test_commands(Files(tmp_path)) == tests


@pytest.mark.parametrize("marker", ["build.gradle.kts", "settings.gradle.kts"])
def test_a_kotlin_dsl_gradle_build_without_a_wrapper_stops_setup_saying_why(tmp_path, marker):
    """Debian's Gradle 4.4.1 reads no Kotlin build script (it would fail with "Task 'testClasses' not found"):
    setup's one command says so and what to do, and fails; no test command is told."""
    write(tmp_path, {marker: "plugins { java }\n", "src/Main.java": "class Main {}\n"})
    assert ecosystems(Files(tmp_path)) == ["java"]
    assert setup_commands(tmp_path, None) == [NO_GRADLE_FOR_KOTLIN]
    assert detect_test_commands(Files(tmp_path)) == []
    ran = subprocess.run(["bash", "-c", NO_GRADLE_FOR_KOTLIN], capture_output=True, text=True, timeout=30)
    assert ran.returncode == 2 and ran.stdout == ""
    assert ran.stderr.startswith("This repository builds with Gradle's Kotlin DSL (build.gradle.kts or "
                                 "settings.gradle.kts) and has no ./gradlew.")
    assert "Commit the Gradle wrapper (gradlew and gradle/wrapper/)" in ran.stderr


def test_a_mixed_repository_sets_up_python_first_then_the_others(tmp_path):
    write(tmp_path, {"pyproject.toml": "[project]\nname='x'\n[tool.pytest.ini_options]\n", "package.json": "{}",
                     "go.mod": "module x\n"})
    assert ecosystems(Files(tmp_path)) == ["node", "go"]
    assert setup_commands(tmp_path, None) == ["python3 -m venv /home/agent/.venv", "pip install -e .", "npm install",
                                              "go build ./..."]
    assert detect_test_commands(Files(tmp_path)) == ["python3 -m pytest", "go test ./..."]


def test_known_files_ask_git_once_and_never_for_a_name_not_at_the_top(tmp_path):
    write(tmp_path, {"package.json": "{}", ".assistant/config.toml": "[sandbox]\n"})
    asked = []

    class Counting(Files):
        def read(self, path):
            asked.append(path)
            return super().read(path)

    files = KnownFiles(Counting(tmp_path))
    for _ in range(3):
        assert files.read("package.json") == "{}"
        assert files.read("pyproject.toml") is None
        assert files.read(".assistant/config.toml") == "[sandbox]\n"
        assert files.read(".assistant/setup.sh") is None
    assert sorted(asked) == [".assistant/config.toml", ".assistant/setup.sh", "package.json"]
    assert files.root == tmp_path  # the rest of the source passes through


def test_toolchain_images_are_named_after_the_base_and_carry_the_union_of_packages():
    assert toolchain_image_name("assistant-sandbox:latest", ["node", "go"]) == "assistant-sandbox-go-node:latest"
    assert toolchain_image_name("registry.example:5000/team/box", ["rust"]) == "registry.example:5000/team/box-rust:latest"
    script = build_script(resolve(["node", "java"]))
    assert "nodejs" in script and "default-jdk-headless" in script and "junit4" in script and " gradle " in script
    with pytest.raises(SandboxError, match="unknown toolchain cobol: choose from node, go"):
        resolve(["cobol"])


@pytest.mark.parametrize("text,error", [
    ("[sandbox]\nimage = 3\n", "must be an image name"),
    ("[sandbox]\nimage = 'a b'\n", "must be an image name"),
    ("[sandbox]\ntoolchains = ['node', 'cobol']\n", "unknown toolchains cobol: choose from node"),
    ("[sandbox]\ntoolchains = 'node'\n", "must be a list"),
    ("[sandbox]\nimages = 'x'\n", "unknown keys images: it takes image and toolchains"),
    ("[sandbox\n", "is not valid TOML"),
])
def test_a_bad_sandbox_table_is_refused_with_what_it_takes(text, error):
    with pytest.raises(SandboxError, match=error):
        repo_sandbox_table(text)


def test_nothing_recognised_means_no_setup(tmp_path):
    write(tmp_path, {"README.md": "hi"})
    assert setup_commands(tmp_path, None) == []
