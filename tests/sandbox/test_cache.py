"""The setup cache: a hit skips setup, restores what setup made, still goes offline; LRU eviction."""

from __future__ import annotations

import pytest

from assistant.sandbox import PrepareRequest, SandboxConfig, prepare
from assistant.sandbox.cache import SetupCache
from assistant.sandbox.engine import docker_client

from .conftest import make_repo

pytestmark = pytest.mark.docker

SETUP = [
    "date +%s%N > ~/home-marker",
    "date +%s%N > workspace-marker && mkdir -p node_modules/pkg && echo built > node_modules/pkg/index.js",
]


@pytest.fixture
def cached_config(reachable_data_dir, docker_image):
    config = SandboxConfig(data_dir=reachable_data_dir, backend="docker", cache_enabled=True, cache_max_entries=2)
    yield config
    SetupCache(config).clear()


def run_job(config, repo, job_id, setup=SETUP):
    prepared = prepare(PrepareRequest(job_id=job_id, repo=str(repo), setup=setup), config)
    try:
        markers = prepared.sandbox.exec("cat ~/home-marker workspace-marker node_modules/pkg/index.js").output
        interfaces = prepared.sandbox.network_interfaces()
    finally:
        prepared.sandbox.close()
    return prepared, markers, interfaces


def test_cache_hit_skips_setup_and_restores_its_results(cached_config, tmp_path):
    repo = make_repo(tmp_path / "repo", {".gitignore": "node_modules/\n", "main.py": "print(1)\n"})
    first, first_markers, _ = run_job(cached_config, repo, "first")
    second, second_markers, interfaces = run_job(cached_config, repo, "second")
    assert not first.cache_hit and len(first.setup_results) == 2
    assert second.cache_hit and second.setup_results == []
    assert second_markers == first_markers and first_markers.endswith("built\n")
    assert "cache hit" in second.setup_network
    assert interfaces == ["lo"]


def test_other_commit_or_commands_miss(cached_config, tmp_path):
    repo = make_repo(tmp_path / "repo", {"main.py": "print(1)\n"})
    assert not run_job(cached_config, repo, "a")[0].cache_hit
    assert not run_job(cached_config, repo, "b", setup=SETUP + ["true"])[0].cache_hit
    make_repo(repo, {"main.py": "print(2)\n"}, message="next")
    assert not run_job(cached_config, repo, "c")[0].cache_hit


def test_maintenance_command_runs_on_a_hit_with_network_then_goes_offline(reachable_data_dir, docker_image, tmp_path):
    config = SandboxConfig(data_dir=reachable_data_dir, backend="docker", cache_enabled=True,
                           maintenance_command="cat /proc/net/dev > ~/maint-net")
    try:
        repo = make_repo(tmp_path / "repo", {"main.py": "print(1)\n"})
        run_job(config, repo, "warmup")
        prepared = prepare(PrepareRequest(job_id="maint", repo=str(repo), setup=SETUP), config)
        try:
            assert prepared.cache_hit
            assert [r.exit_code for r in prepared.setup_results] == [0]
            assert "eth0" in prepared.sandbox.exec("cat ~/maint-net").output
            assert prepared.sandbox.network_interfaces() == ["lo"]
        finally:
            prepared.sandbox.close()
    finally:
        SetupCache(config).clear()


def test_least_recently_used_entry_is_evicted_with_its_image(cached_config, tmp_path):
    repos = [make_repo(tmp_path / f"repo{i}", {"n.txt": str(i)}) for i in range(3)]
    run_job(cached_config, repos[0], "r0")
    run_job(cached_config, repos[1], "r1")
    assert run_job(cached_config, repos[0], "r0-again")[0].cache_hit  # repo 1 is now the least recent
    evicted = {e.key: e for e in SetupCache(cached_config).entries()}
    run_job(cached_config, repos[2], "r2")
    remaining = SetupCache(cached_config).entries()
    assert len(remaining) == 2
    gone = set(evicted) - {e.key for e in remaining}
    assert len(gone) == 1
    gone_entry = evicted[gone.pop()]
    assert docker_client().images.list(name=gone_entry.image) == []
    assert run_job(cached_config, repos[0], "r0-third")[0].cache_hit
