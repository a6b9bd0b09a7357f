"""Real projects in other languages, through `assistant run --json` on the Docker engine with no setup given:
the toolchain image is chosen (and built, the first time) from the repository's files, setup is detected and
runs online, the tests run offline, and a scripted agent's fix comes out as exactly that diff, of kind fix.

Sources are taken at test time with the ordinary clients, never kept in this repository: a JavaScript library
from the npm registry (`npm pack`), a Go and a Rust library from the source Debian's packages install
(golang-*-dev under /usr/share/gocode, librust-*-dev under /usr/share/cargo/registry; `scripts/setup.sh test`
installs them), and a small Java project of our own built with Debian's JDK and JUnit, once with Maven and once
with Gradle (a `build.gradle` naming `mavenCentral()`, which the image's init script replaces by Debian's Maven
repository). Only PyPI, the npm registry and Debian's archive are reachable here, so the Go, Rust and Java builds
work offline from what Debian packages.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from assistant.testing.scripted_model import Reply, by_turn
from tests.e2e.projects import GIT_DATES, Site, apply_patch_text, cited_lines, replace_once

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

AGENT = "You are a careful software engineer"
GOCODE = Path("/usr/share/gocode/src")
CARGO_REGISTRY = Path("/usr/share/cargo/registry")


@dataclass(frozen=True)
class LangProject:
    name: str
    toolchain: str
    fetch: Callable[[Path], Path]     # the project's source, unpacked under the given folder
    test: str                         # the command the agent runs (what detection says runs the tests)
    setup: tuple[str, ...]            # what setup detection must come up with
    bug: Site


def _npm_pack(spec: str) -> Callable[[Path], Path]:
    def fetch(into: Path) -> Path:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("these tests take a JavaScript library with `npm pack`: run scripts/setup.sh test, which "
                        "installs npm")
        into.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([npm, "pack", spec, "--silent"], cwd=into, capture_output=True, text=True, timeout=600)
        archives = list(into.glob("*.tgz"))
        if proc.returncode != 0 or not archives:
            raise RuntimeError(f"npm pack {spec} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
        with tarfile.open(archives[0]) as tar:
            tar.extractall(into, filter="data")
        return into / "package"
    return fetch


def _debian_source(pattern: Path, package: str) -> Callable[[Path], Path]:
    def fetch(into: Path) -> Path:
        found = sorted(pattern.parent.glob(pattern.name))
        if not found:
            pytest.fail(f"these tests take a library's source from Debian's {package}: run scripts/setup.sh test, "
                        f"which installs it")
        target = into / found[-1].name
        shutil.copytree(found[-1], target, symlinks=False)
        return target
    return fetch


JAVA_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>org.example</groupId>
  <artifactId>words</artifactId>
  <version>1.0</version>
  <packaging>jar</packaging>
  <properties>
    <maven.compiler.source>17</maven.compiler.source>
    <maven.compiler.target>17</maven.compiler.target>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>
  <dependencies>
    <dependency>
      <groupId>junit</groupId>
      <artifactId>junit</artifactId>
      <version>4.x</version>
      <scope>test</scope>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin><artifactId>maven-resources-plugin</artifactId><version>{resources}</version></plugin>
      <plugin><artifactId>maven-compiler-plugin</artifactId><version>{compiler}</version></plugin>
      <plugin><artifactId>maven-surefire-plugin</artifactId><version>{surefire}</version></plugin>
    </plugins>
  </build>
</project>
"""
JAVA_WORDS = """package org.example.words;

/** Counting and capitalising the words of a line. */
public final class Words {
    private Words() {
    }

    /** How many words the text has; words are separated by any run of white space. */
    public static int count(String text) {
        String trimmed = text.trim();
        if (trimmed.isEmpty()) {
            return 0;
        }
        return trimmed.split("\\\\s+").length;
    }

    /** The text with the first letter of each word in upper case. */
    public static String capitalise(String text) {
        StringBuilder out = new StringBuilder(text.length());
        boolean start = true;
        for (char c : text.toCharArray()) {
            out.append(start ? Character.toUpperCase(c) : c);
            start = Character.isWhitespace(c);
        }
        return out.toString();
    }
}
"""
JAVA_TEST = """package org.example.words;

import static org.junit.Assert.assertEquals;

import org.junit.Test;

public class WordsTest {
    @Test
    public void countsWordsSeparatedByAnyWhiteSpace() {
        assertEquals(3, Words.count("one two\\tthree"));
        assertEquals(3, Words.count("one  two three"));
        assertEquals(2, Words.count("  leading and"));
        assertEquals(0, Words.count("   "));
    }

    @Test
    public void capitalisesEachWord() {
        assertEquals("Hello World", Words.capitalise("hello world"));
    }
}
"""
# The plugin versions Debian's Maven repository has (the pom names them, as a project built offline must).
MAVEN_PLUGINS = {"resources": "3.3.0", "compiler": "3.10.1", "surefire": "2.22.3"}


# What a Gradle project commonly says; Maven Central is out of reach here, and the java image's init script puts
# Debian's Maven repository (its junit 4.13.2) in its place.
JAVA_BUILD_GRADLE = """plugins {
    id 'java'
}

repositories {
    mavenCentral()
}

dependencies {
    testImplementation 'junit:junit:4.13.2'
}
"""


def _java_project(build: dict[str, str], name: str = "words") -> Callable[[Path], Path]:
    def fetch(into: Path) -> Path:
        root = into / name
        files = {
            **build,
            "src/main/java/org/example/words/Words.java": JAVA_WORDS,
            "src/test/java/org/example/words/WordsTest.java": JAVA_TEST,
        }
        for path, text in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
        return root
    return fetch


WORDS_BUG = Site("src/main/java/org/example/words/Words.java", '        return trimmed.split("\\\\s+").length;',
                 '        return trimmed.split(" ").length;')

PROJECTS = [
    LangProject("concat-map", "node", _npm_pack("concat-map@0.0.1"), "npm test", ("npm install",),
                Site("index.js", "        if (isArray(x)) res.push.apply(res, x);",
                     "        if (isArray(x)) res.push(x);")),
    LangProject("go-uuid", "go", _debian_source(GOCODE / "github.com/google/uuid", "golang-github-google-uuid-dev"),
                "go test ./...", ("go build ./...",),
                Site("util.go", "\treturn (b1 << 4) | b2, b1 != 255 && b2 != 255",
                     "\treturn (b2 << 4) | b1, b1 != 255 && b2 != 255")),
    LangProject("fnv", "rust", _debian_source(CARGO_REGISTRY / "fnv-*", "librust-fnv-dev"), "cargo test",
                ("cargo fetch", "cargo test --no-run"),
                Site("lib.rs", "            hash = hash ^ (*byte as u64);", "            hash = hash | (*byte as u64);")),
    LangProject("words", "java", _java_project({"pom.xml": JAVA_POM.format(**MAVEN_PLUGINS), ".gitignore": "target/\n"}),
                "mvn -B test", ("mvn -B -q test-compile",), WORDS_BUG),
    LangProject("words-gradle", "java",
                _java_project({"build.gradle": JAVA_BUILD_GRADLE, "settings.gradle": "rootProject.name = 'words'\n",
                               ".gitignore": "build/\n.gradle/\n"}, "words-gradle"),
                "gradle --no-daemon test", ("gradle --no-daemon testClasses",), WORDS_BUG),
]


def make_repo(project: LangProject, root: Path) -> Path:
    source = project.fetch(root / "source")
    replace_once(source, project.bug, project.bug.good, project.bug.bad)
    env = {**os.environ, **GIT_DATES}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", f"{project.name} with a bug"]):
        subprocess.run(["git", *args], cwd=source, env=env, check=True, capture_output=True)
    return source


def tool_runs(request: dict) -> list[tuple[str, int]]:
    runs = []
    for message in request.get("messages", []):
        if message.get("role") == "tool":
            match = re.search(r"chunk ([0-9a-f]{6}) · (\d+) lines?", message.get("content") or "")
            if match:
                runs.append((match[1], int(match[2])))
    return runs


def scripted_fix(project: LangProject, repo: Path):
    edits = [(project.bug, project.bug.bad, project.bug.good)]
    path, first, last = cited_lines(repo, edits)

    def summary(request: dict) -> Reply:
        (before, before_lines), *_ = tool_runs(request)
        after, after_lines = tool_runs(request)[-1]
        return Reply.text(f"The bug was in `{path}` 【F:{path}†L{first}-L{last}】. The tests failed before the change "
                          f"【{before}†L1-L{before_lines}】 and pass after it 【{after}†L1-L{after_lines}】.")

    return by_turn(Reply.call("shell", command=project.test),
                   Reply.call("apply_patch", patch=apply_patch_text(repo, edits)),
                   Reply.call("shell", command=project.test), summary)


def cli_env(data_dir: Path, model) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTANT_", "OPENAI_"))}
    env.update(ASSISTANT_DATA_DIR=str(data_dir), OPENAI_BASE_URL=model.base_url, OPENAI_API_KEY="k",
               ASSISTANT_MODEL="scripted-model", ASSISTANT_SANDBOX_BACKEND="docker",
               ASSISTANT_CONFIG=str(data_dir / "none.toml"), NO_PROXY="127.0.0.1,localhost")
    return env


@pytest.mark.parametrize("project", PROJECTS, ids=[p.name for p in PROJECTS])
def test_a_scripted_fix_in_another_language_comes_out_as_a_fix(project, tmp_path, scripted_model, docker_engine):
    repo = make_repo(project, tmp_path)
    scripted_model.when_system_contains(AGENT, [scripted_fix(project, repo)], repeat_last=True)
    proc = subprocess.run([sys.executable, "-m", "assistant.cli", "run", "--repo", str(repo), "--json",
                           f"Fix the failing tests of {project.name}"],
                          env=cli_env(tmp_path / "data", scripted_model), capture_output=True, text=True, timeout=1700)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)

    # Setup was detected from the repository's files and ran online, in the toolchain's image.
    ran = re.findall(r"setup \$ (.+?)  → exit (\d+)", proc.stderr)
    assert ran == [(command, "0") for command in project.setup], proc.stderr[-4000:]
    assert out["setup_network"] == "bridge"
    assert f"sandbox image: assistant-sandbox-{project.toolchain}:latest" in out["notices"], out["notices"]

    # The tests ran offline: failing before the edit, passing after it.
    assert out["agent_network"] == "none (verified: lo only)"
    outcome = out["outcome"]
    runs = [int(code) for title, code in re.findall(r"step \d+: (.+?) → exit (\d+)", proc.stderr)
            if project.test in title]
    assert len(runs) == 2 and runs[0] != 0 and runs[1] == 0, proc.stderr[-4000:]
    last = outcome["evidence"][-1]
    assert (last["command"], last["exit_code"], last["after_last_edit"]) == (project.test, 0, True)
    assert outcome["kind"] == "fix", outcome["kind_reason"]

    # The diff is exactly the fix: no dependency folder, lock file or build output.
    assert [path for _status, path in outcome["files"]] == [project.bug.path], outcome["files"]
    removed = [line for line in out["diff"].splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line for line in out["diff"].splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert (removed, added) == (["-" + project.bug.bad], ["+" + project.bug.good]), out["diff"]
    assert all(c["valid"] for c in out["citations"]), out["citations"]
