"""Preparing a job: clone, setup with network, then offline; errors a user can act on."""

from __future__ import annotations

import importlib
import os
import tempfile
import threading
import time
from pathlib import Path

import pytest

from assistant.sandbox import PrepareRequest, RepoError, SandboxConfig, SandboxError, SetupFailed, prepare
from assistant.sandbox.engine import JOB_LABEL, docker_client
from assistant.sandbox.toolchains import toolchain_image_name
from tests.jobs.fake_sandbox import FakeSandbox

from .conftest import git, make_repo

prepare_module = importlib.import_module("assistant.sandbox.prepare")

PACKAGE_INDEX_PROBE = "pip download --no-deps --no-cache-dir --timeout 15 --retries 0 six -d /tmp/probe"


def test_setup_reaches_the_package_index_and_the_agent_phase_cannot(config_for, small_repo):
    states, logged = [], []
    prepared = prepare(
        PrepareRequest(job_id="net", repo=str(small_repo), setup=[PACKAGE_INDEX_PROBE]),
        config_for(),
        on_state=states.append,
        on_command=lambda command, result: logged.append((command, result)),
    )
    sandbox = prepared.sandbox
    try:
        assert states == ["preparing", "setting_up"]
        assert [command for command, _ in logged] == [PACKAGE_INDEX_PROBE]
        assert logged[0][1].exit_code == 0, logged[0][1].output
        assert "Saved" in logged[0][1].output
        assert prepared.setup_network in ("bridge", "host network (bubblewrap --share-net)")
        assert "lo only" in prepared.agent_network
        assert sandbox.network_interfaces() == ["lo"]
        offline = sandbox.exec(PACKAGE_INDEX_PROBE.replace("/tmp/probe", "/tmp/probe2"), timeout_s=60)
        assert offline.exit_code != 0
        assert "six" not in sandbox.exec("ls /tmp/probe2 2>/dev/null").output
    finally:
        sandbox.close()


def test_without_setup_the_sandbox_starts_offline(config_for, small_repo):
    prepared = prepare(PrepareRequest(job_id="quiet", repo=str(small_repo), setup=[]), config_for())
    try:
        assert prepared.setup_network.startswith("none")
        assert prepared.sandbox.network_interfaces() == ["lo"]
        assert prepared.base_commit == git(small_repo, "rev-parse", "HEAD").strip()
    finally:
        prepared.sandbox.close()


def test_ref_is_checked_out_and_the_source_repo_is_untouched(config_for, tmp_path):
    repo = make_repo(tmp_path / "source", {"a.txt": "one\n"})
    first = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "tag", "v1")
    make_repo(repo, {"a.txt": "two\n"}, message="second")
    before = {p: os.stat(p).st_uid for p in repo.rglob("*")}
    prepared = prepare(PrepareRequest(job_id="ref", repo=str(repo), ref="v1", setup=[]), config_for())
    try:
        assert prepared.base_commit == first
        assert prepared.sandbox.exec("cat a.txt; git log --oneline | wc -l").output == "one\n1\n"
        assert prepared.sandbox.exec("git status --porcelain && git rev-parse HEAD").output.strip() == first
    finally:
        prepared.sandbox.close()
    assert {p: os.stat(p).st_uid for p in repo.rglob("*")} == before


def test_repo_setup_script_is_used_when_the_request_names_none(config_for, tmp_path):
    repo = make_repo(tmp_path / "scripted", {".assistant/setup.sh": "echo from-the-repo > ~/setup-ran\n",
                                             "pyproject.toml": "[project]\nname = 'x'\n"})
    prepared = prepare(PrepareRequest(job_id="script", repo=str(repo)), config_for())
    try:
        assert prepared.setup_commands == ["bash .assistant/setup.sh"]
        assert prepared.sandbox.exec("cat ~/setup-ran").output == "from-the-repo\n"
    finally:
        prepared.sandbox.close()


def test_failing_setup_raises_with_the_log_and_leaves_no_sandbox(config_for, small_repo, backend):
    with pytest.raises(SetupFailed) as caught:
        prepare(PrepareRequest(job_id="broken-setup", repo=str(small_repo),
                               setup=["echo preparing", "echo 'no such thing' >&2; exit 7", "echo never"]),
                config_for())
    assert caught.value.command == "echo 'no such thing' >&2; exit 7"
    assert caught.value.result.exit_code == 7
    assert "no such thing" in caught.value.result.output
    assert "exited with code 7" in str(caught.value)
    if backend == "docker":
        assert docker_client().containers.list(ignore_removed=True, all=True, filters={"label": f"{JOB_LABEL}=broken-setup"}) == []


def test_allowed_setup_failure_goes_on_offline_and_reports_it(config_for, small_repo):
    prepared = prepare(PrepareRequest(job_id="tolerant", repo=str(small_repo), setup=["exit 4", "echo never"]),
                       config_for(allow_setup_failure=True))
    try:
        command, result = prepared.failed_setup
        assert command == "exit 4" and result.exit_code == 4
        assert len(prepared.setup_results) == 1
        assert prepared.sandbox.network_interfaces() == ["lo"]
    finally:
        prepared.sandbox.close()


@pytest.mark.parametrize("repo, ref, message", [
    ("/nonexistent/repo/path", None, "does not exist"),
    ("file:///nonexistent/remote.git", None, "could not clone"),
])
def test_missing_repositories_give_clear_errors(config_for, repo, ref, message):
    with pytest.raises(RepoError, match=message):
        prepare(PrepareRequest(job_id="missing", repo=repo, ref=ref, setup=[]), config_for())


def test_unknown_ref_and_non_repository_give_clear_errors(config_for, small_repo, tmp_path):
    with pytest.raises(RepoError, match=r"ref 'no-such-branch' does not exist .*branches: main"):
        prepare(PrepareRequest(job_id="badref", repo=str(small_repo), ref="no-such-branch", setup=[]), config_for())
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RepoError, match="not a git repository"):
        prepare(PrepareRequest(job_id="plain", repo=str(plain), setup=[]), config_for())


# ------------------------------------------------- the early sandbox a toolchain image makes unneeded (no engine)
class _Gated(FakeSandbox):
    """A fake sandbox whose close can be held, and that tells when it was closed."""

    def __init__(self, root, close_gate: threading.Event | None = None):
        super().__init__(root)
        self.close_gate = close_gate
        self.closed_event = threading.Event()

    def close(self) -> None:
        if self.close_gate is not None:
            assert self.close_gate.wait(30), "the test never released the close"
        super().close()
        self.closed_event.set()


class _Starter:
    """Starts fake sandboxes; one on the default image (the early start) can be held until released."""
    backend = "docker"

    def __init__(self, default_image: str, *, hold_start: bool = False, hold_close: bool = False):
        self.default_image = default_image
        self.release_start = threading.Event()
        self.release_close = threading.Event()
        self.hold_start, self.hold_close = hold_start, hold_close
        self.started: list[tuple[str, _Gated]] = []
        self.lock = threading.Lock()

    def __call__(self, *, job_id, config, image, network):
        early = image == self.default_image
        if early and self.hold_start:
            assert self.release_start.wait(30), "the test never released the start"
        sandbox = _Gated(Path(tempfile.mkdtemp(prefix=f"early-test-{job_id}-")),
                         self.release_close if early and self.hold_close else None)
        with self.lock:
            self.started.append((image, sandbox))
        return sandbox

    def on(self, image: str) -> list[_Gated]:
        with self.lock:
            return [sandbox for name, sandbox in self.started if name == image]


@pytest.fixture
def node_repo(tmp_path):
    return make_repo(tmp_path / "node", {"package.json": "{}\n", "index.js": "module.exports = 1;\n"})


@pytest.fixture
def node_image_ready(monkeypatch):
    """The node toolchain image counts as built (what the engine would say), so no engine is asked."""
    from assistant.sandbox import image_choice

    def status(base, names, engine=None):
        return toolchain_image_name(base, names), True, "ready"
    monkeypatch.setattr(image_choice, "toolchain_image_status", status)


def _prepare_on_a_thread(request: PrepareRequest, config: SandboxConfig, starter: _Starter, announced: list):
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["prepared"] = prepare(request, config, start=starter, on_sandbox=announced.append)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(15)
    return thread, outcome


def test_a_toolchain_job_does_not_wait_for_the_early_sandbox_which_is_closed_once_started(
        tmp_path, node_repo, node_image_ready):
    config = SandboxConfig(data_dir=tmp_path / "data", backend="docker", cache_enabled=False)
    starter = _Starter(config.image, hold_start=True)
    announced: list = []
    node_image = toolchain_image_name(config.image, ["node"])

    thread, outcome = _prepare_on_a_thread(PrepareRequest(job_id="early1", repo=str(node_repo), setup=[]), config,
                                           starter, announced)
    try:
        assert not thread.is_alive(), "prepare() waited for the early sandbox on the default image to start"
        prepared = outcome["prepared"]
        assert prepared.image == node_image and [s for s in starter.on(node_image)] == [prepared.sandbox]
        assert starter.on(config.image) == []  # the early start is still held: nothing was waited for
    finally:
        starter.release_start.set()
    deadline = time.monotonic() + 10
    while not starter.on(config.image) and time.monotonic() < deadline:
        time.sleep(0.01)
    [early] = starter.on(config.image)
    assert early.closed_event.wait(10), "the early sandbox was left running"
    assert announced == [prepared.sandbox]  # the abandoned one never became the job's (a cancel closes the right one)
    assert not prepared.sandbox.closed
    prepared.sandbox.close()


def test_an_early_sandbox_that_started_first_is_closed_without_the_job_waiting_for_its_removal(
        tmp_path, node_repo, node_image_ready):
    config = SandboxConfig(data_dir=tmp_path / "data", backend="docker", cache_enabled=False)
    starter = _Starter(config.image, hold_close=True)
    announced: list = []
    real_prepare_source = prepare_module.prepare_source

    def slow_source(*args, **kwargs):  # the early start wins the race with reading the files
        deadline = time.monotonic() + 10
        while not starter.on(config.image) and time.monotonic() < deadline:
            time.sleep(0.01)
        return real_prepare_source(*args, **kwargs)
    try:
        prepare_module.prepare_source = slow_source
        thread, outcome = _prepare_on_a_thread(PrepareRequest(job_id="early2", repo=str(node_repo), setup=[]),
                                               config, starter, announced)
        assert not thread.is_alive(), "prepare() waited for the early sandbox's close"
    finally:
        prepare_module.prepare_source = real_prepare_source
        starter.release_close.set()
    prepared = outcome["prepared"]
    [early] = starter.on(config.image)
    assert early.closed_event.wait(10), "the early sandbox was left running"
    assert announced == [early, prepared.sandbox]  # the job's own sandbox is the one a cancel closes
    prepared.sandbox.close()


def test_a_preparation_that_fails_closes_its_early_sandbox_after_it_started(tmp_path):
    repo = make_repo(tmp_path / "bad", {".assistant/config.toml": "[sandbox\n"})
    config = SandboxConfig(data_dir=tmp_path / "data", backend="docker", cache_enabled=False)
    starter = _Starter(config.image, hold_start=True)
    thread, outcome = _prepare_on_a_thread(PrepareRequest(job_id="early3", repo=str(repo), setup=[]), config,
                                           starter, [])
    try:
        assert not thread.is_alive(), "a failed prepare() waited for the early sandbox"
        assert isinstance(outcome["error"], SandboxError) and "not valid TOML" in str(outcome["error"])
    finally:
        starter.release_start.set()
    deadline = time.monotonic() + 10
    while not starter.on(config.image) and time.monotonic() < deadline:
        time.sleep(0.01)
    [early] = starter.on(config.image)
    assert early.closed_event.wait(10), "the failed job's early sandbox was left running"
