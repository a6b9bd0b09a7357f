"""Which image a job runs on, on a real Docker engine: the toolchain image its files call for (built on first
use, with progress), the image the repository names (checked to run the command server; only allowed ones with
several users), and the warm pool keyed on the chosen image."""

from __future__ import annotations

import secrets
import time

import pytest

from assistant.sandbox import PrepareRequest, SandboxConfig, SandboxError, SetupFailed, prepare
from assistant.sandbox.engine import docker_client
from assistant.sandbox.setup_commands import NO_GRADLE_FOR_KOTLIN
from assistant.sandbox.toolchains import TOOLCHAIN_LABEL, ensure_toolchain_image, toolchain_image_name
from assistant.sandbox.warm import WarmPool

from .conftest import make_repo

pytestmark = pytest.mark.docker


@pytest.fixture
def own_images(docker_image):
    """Images this test makes (tags of the default image and what is built on them), removed afterwards."""
    made: list[str] = []

    def tag(kind: str) -> str:
        name = f"assistant-test-{kind}-{secrets.token_hex(3)}:latest"
        repository, _, tagname = name.rpartition(":")
        docker_client().images.get(docker_image).tag(repository, tagname)
        made.append(name)
        return name

    yield tag, made
    for name in reversed(made):
        try:
            docker_client().images.remove(name, force=True)
        except Exception:
            pass


@pytest.fixture
def config(reachable_data_dir, docker_image) -> SandboxConfig:
    return SandboxConfig(data_dir=reachable_data_dir, backend="docker", cache_enabled=False)


def run(config: SandboxConfig, repo, setup: list[str] | None = [], **kw):
    output: list[str] = []
    prepared = prepare(PrepareRequest(job_id=f"img-{secrets.token_hex(2)}", repo=str(repo), setup=setup), config,
                       on_output=output.append, **kw)
    return prepared, "".join(output)


def test_a_toolchain_image_is_built_on_first_use_with_progress_and_reused(config, own_images, tmp_path):
    tag, made = own_images
    base = tag("base")  # a base of its own, so its ruby image is surely not built yet
    config = SandboxConfig(**{**config.__dict__, "image": base})
    expected = toolchain_image_name(base, ["ruby"])
    made.append(expected)
    repo = make_repo(tmp_path / "gems", {"Gemfile": "source 'https://gems.example.invalid'\n", "lib/x.rb": "1\n"})

    prepared, output = run(config, repo)
    try:
        assert prepared.image == expected
        assert f"building the sandbox image {expected} once" in output and f"built {expected} in" in output
        assert "ruby: ruby 3." in output  # the toolchain's version, printed at the end of the build
        version = prepared.sandbox.exec("ruby --version && bundle --version && echo $BUNDLE_PATH && id -u")
        assert version.exit_code == 0 and version.output.split()[-2:] == ["/home/agent/.bundle", "1000"]
        assert prepared.test_commands == [] and prepared.setup_commands == []
    finally:
        prepared.sandbox.close()
    labels = docker_client().images.get(expected).labels
    assert labels[TOOLCHAIN_LABEL] == "ruby" and labels["assistant.sandbox-image"] == "1"

    again, output = run(config, repo)
    again.sandbox.close()
    assert again.image == expected and "building" not in output

    # [sandbox] toolchains = [] keeps the default image whatever the files say.
    make_repo(repo, {".assistant/config.toml": "[sandbox]\ntoolchains = []\n"})
    plain, _ = run(config, repo)
    plain.sandbox.close()
    assert plain.image == base


def test_a_repository_may_name_its_image_if_it_can_run_the_sandbox_and_is_allowed(config, own_images, tmp_path):
    tag, made = own_images
    own = tag("own")
    repo = make_repo(tmp_path / "repo", {"package.json": "{}", ".assistant/config.toml": f'[sandbox]\nimage = "{own}"\n'})

    prepared, _ = run(config, repo)
    try:
        assert prepared.image == own  # named, so no toolchain image although package.json is there
        assert prepared.sandbox.exec("true").exit_code == 0
    finally:
        prepared.sandbox.close()

    several = SandboxConfig(**{**config.__dict__, "allowed_images": ()})
    with pytest.raises(SandboxError, match=rf"names the sandbox image {own}, which this server does not allow .*"
                                           r"ASSISTANT_SANDBOX_ALLOWED_IMAGES"):
        run(several, repo)
    allowed = SandboxConfig(**{**config.__dict__, "allowed_images": (own,)})
    prepared, _ = run(allowed, repo)
    prepared.sandbox.close()
    assert prepared.image == own

    missing = f"assistant-test-missing-{secrets.token_hex(3)}:latest"
    make_repo(repo, {".assistant/config.toml": f'[sandbox]\nimage = "{missing}"\n'})
    with pytest.raises(SandboxError, match=f"{missing} named in the repository's .assistant/config.toml is not on the"):
        run(config, repo)

    # An image without python3 cannot run the command server: refused before any job container starts.
    client = docker_client()
    broken = f"assistant-test-nopython-{secrets.token_hex(3)}"
    container = client.containers.run(own, ["sh", "-c", "rm -f /usr/bin/python3*"], user="0:0", detach=True)
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0
        container.commit(repository=broken, tag="latest")
    finally:
        container.remove(force=True)
    made.append(f"{broken}:latest")
    make_repo(repo, {".assistant/config.toml": f'[sandbox]\nimage = "{broken}:latest"\n'})
    with pytest.raises(SandboxError, match=r"cannot run the sandbox: it needs python3 \(3.8 or later\) and bash"):
        run(config, repo)


def test_the_warm_pool_readies_on_the_toolchain_image_and_never_builds_one(config, own_images, tmp_path):
    node = ensure_toolchain_image(config.image, ["node"], on_log=lambda _line: None)
    repo = make_repo(tmp_path / "js", {"package.json": '{"scripts": {"test": "node t.js"}}', "t.js": "1\n"})
    pool = WarmPool(config)
    try:
        pool.request(str(repo), setup=[])
        deadline = time.monotonic() + 60
        while pool.counts()["ready"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        prepared, _ = run(config, repo, warm=pool)
        try:
            assert prepared.warm_pool and prepared.image == node
            assert prepared.test_commands == ["npm test"]
            assert prepared.sandbox.exec("node --version").exit_code == 0
        finally:
            prepared.sandbox.close()

        # On a base whose toolchain image is not built, nothing is readied (a build never runs ahead of a job).
        tag, _made = own_images
        other = SandboxConfig(**{**config.__dict__, "image": tag("base")})
        other_pool = WarmPool(other)
        try:
            other_pool.request(str(repo), setup=[])
            deadline = time.monotonic() + 60
            while other_pool.stats.requested and other_pool.counts()["resolving"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert other_pool.counts() == {"ready": 0, "starting": 0, "resolving": 0}
        finally:
            other_pool.close()
    finally:
        pool.close()


GRADLE_PROJECT = {
    # What a Gradle build commonly names: Maven Central, which the java image's init script replaces by Debian's
    # Maven repository (its junit 4.13.2).
    "build.gradle": "plugins { id 'java' }\nrepositories { mavenCentral() }\n"
                    "dependencies { testImplementation 'junit:junit:4.13.2' }\n",
    ".gitignore": "build/\n.gradle/\n",
    "src/main/java/calc/Calc.java": "package calc;\n\npublic class Calc {\n"
                                    "    public static int add(int a, int b) { return a - b; }\n}\n",
    "src/test/java/calc/CalcTest.java": "package calc;\n\nimport static org.junit.Assert.assertEquals;\n\n"
                                        "import org.junit.Test;\n\npublic class CalcTest {\n"
                                        "    @Test public void adds() { assertEquals(5, Calc.add(2, 3)); }\n}\n",
}


@pytest.mark.timeout(1500)  # the java image is built first when it is missing or from an older recipe
def test_a_gradle_project_builds_and_tests_offline_from_debian_packages(config, tmp_path):
    """Debian's Gradle 4.4.1 on JDK 17 in the java image: detected setup compiles a JUnit 4 project whose build
    names Maven Central, its tests run offline and a failure shows expected and actual; a Kotlin-DSL build
    without gradlew stops at setup with what to do."""
    repo = make_repo(tmp_path / "calc", GRADLE_PROJECT)
    prepared, output = run(config, repo, setup=None)
    try:
        assert prepared.image == toolchain_image_name(config.image, ["java"])
        assert prepared.setup_commands == ["gradle --no-daemon testClasses"]
        assert prepared.test_commands == ["gradle --no-daemon test"]
        assert [r.exit_code for r in prepared.setup_results] == [0], output[-3000:]
        assert prepared.agent_network.startswith("none")
        failing = prepared.sandbox.exec("gradle --no-daemon test", timeout_s=900)
        assert failing.exit_code != 0 and "calc.CalcTest > adds FAILED" in failing.output, failing.output[-3000:]
        assert "expected:<5> but was:<-1>" in failing.output, failing.output[-3000:]
        assert "MavenResolverHook" not in output + failing.output  # Debian's packaging hook is off
        fixed = prepared.sandbox.exec("sed -i 's/a - b/a + b/' src/main/java/calc/Calc.java && "
                                      "gradle --no-daemon test", timeout_s=900)
        assert fixed.exit_code == 0 and "BUILD SUCCESSFUL" in fixed.output, fixed.output[-3000:]
        assert prepared.sandbox.exec("ls build/test-results/test").output.split() == ["TEST-calc.CalcTest.xml",
                                                                                        "binary"]
    finally:
        prepared.sandbox.close()

    source = GRADLE_PROJECT["src/main/java/calc/Calc.java"]
    kotlin = make_repo(tmp_path / "kts", {"build.gradle.kts": "plugins { java }\n",
                                          "src/main/java/calc/Calc.java": source})
    with pytest.raises(SetupFailed) as failed:
        run(config, kotlin, setup=None)
    assert failed.value.command == NO_GRADLE_FOR_KOTLIN and failed.value.result.exit_code == 2
    assert "has no ./gradlew. The sandbox's Gradle is Debian's 4.4.1" in failed.value.result.output
