"""Preparing a job: clone, setup with network, then offline; errors a user can act on."""

from __future__ import annotations

import os

import pytest

from assistant.sandbox import PrepareRequest, RepoError, SetupFailed, prepare
from assistant.sandbox.engine import JOB_LABEL, docker_client

from .conftest import git, make_repo

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
        assert docker_client().containers.list(all=True, filters={"label": f"{JOB_LABEL}=broken-setup"}) == []


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
