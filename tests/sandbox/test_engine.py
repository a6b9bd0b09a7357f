"""Engine status, backend choice, orphan sweeping, the image's mirror and CA bundle settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from assistant.sandbox import SandboxConfig, SandboxError, docker_status, image_status, resolve_backend, sweep_orphans
from assistant.sandbox.engine import MANAGED_LABEL, OWNER_LABEL, docker_client, owner_tag
from assistant.sandbox.image import debian_mirror, host_ca_bundle
from assistant.sandbox.output import head_and_tail


@pytest.mark.docker
def test_status_and_backend_choice(docker_image, tmp_path):
    ok, detail = docker_status()
    assert ok and detail.startswith("engine ")
    assert resolve_backend(SandboxConfig(data_dir=tmp_path)).backend == "docker"
    assert resolve_backend(SandboxConfig(data_dir=tmp_path, backend="local")).backend == "local"
    assert image_status(docker_image)[0]
    present, message = image_status("assistant-no-such-image:latest")
    assert not present and "assistant sandbox build" in message
    with pytest.raises(SandboxError):
        resolve_backend(SandboxConfig(data_dir=tmp_path, backend="podman"))


@pytest.mark.docker
def test_sweep_removes_containers_whose_server_died_and_keeps_live_ones(docker_image):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = docker_client()
    boot = owner_tag().rpartition(":")[0]
    orphan = client.containers.create(docker_image, command=["sleep", "60"],
                                      labels={MANAGED_LABEL: "1", OWNER_LABEL: f"{boot}:{dead.pid}"})
    alive = client.containers.create(docker_image, command=["sleep", "60"],
                                     labels={MANAGED_LABEL: "1", OWNER_LABEL: owner_tag()})
    try:
        assert sweep_orphans() >= 1
        ids = {c.id for c in client.containers.list(ignore_removed=True, all=True, filters={"label": f"{MANAGED_LABEL}=1"})}
        assert orphan.id not in ids and alive.id in ids
    finally:
        for container in (orphan, alive):
            try:
                container.remove(force=True)
            except Exception:
                pass


def test_mirror_comes_from_the_host_apt_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb deb-src\nURIs: http://mirror.test/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.test/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("# comment\ndeb [arch=amd64] http://legacy.test/debian bookworm main\n")
    assert debian_mirror(tmp_path) == "http://legacy.test/debian"
    (tmp_path / "sources.list").write_text("deb http://legacy.test/debian trixie main\n")
    with pytest.raises(SandboxError, match="no Debian bookworm mirror"):
        debian_mirror(tmp_path)


def test_ca_bundle_setting(tmp_path, monkeypatch):
    bundle = tmp_path / "corp.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert host_ca_bundle("") is None
    assert host_ca_bundle(str(bundle)) == bundle
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    assert host_ca_bundle(None) == bundle
    with pytest.raises(SandboxError, match="does not exist"):
        host_ca_bundle(str(tmp_path / "missing.pem"))


@pytest.mark.docker
def test_image_trusts_the_host_bundle_and_has_the_tools(open_sandbox, backend):
    if backend != "docker":
        pytest.skip("the image is a docker matter")
    sandbox = open_sandbox()
    result = sandbox.exec("echo $SSL_CERT_FILE $PIP_CERT; python3 -m venv /tmp/v && echo venv-ok; "
                          "rg --version | head -1; gcc --version | head -1; git --version")
    assert result.output.startswith("/etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\nvenv-ok\n")
    assert "ripgrep" in result.output and "gcc" in result.output and "git version" in result.output
    host_bundle = host_ca_bundle(None)
    if host_bundle is not None:
        last_cert = host_bundle.read_text().strip().splitlines()[-2]
        assert sandbox.exec(f"grep -c -- '{last_cert}' /etc/ssl/certs/ca-certificates.crt").output.strip() != "0"


def test_head_and_tail_counts_what_it_elides():
    text = "".join(f"line {i}\n" for i in range(1000))
    shown = head_and_tail(text, max_chars=400)
    assert shown.startswith("line 0\n") and shown.endswith("line 999\n")
    assert len(shown) < 500
    elided = shown.split("[... ")[1].split(" lines")[0]
    assert int(elided) == 1000 - shown.count("\n") + 1
    assert head_and_tail("short\n", 400) == "short\n"


@pytest.mark.docker
def test_a_user_named_image_without_an_agent_home_works(docker_image, tmp_path, small_repo):
    from assistant.sandbox import PrepareRequest, prepare

    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {docker_image}\nUSER root\nRUN rm -rf /home/agent\nLABEL assistant.sandbox-image=\"0\"\n"
    )
    tag = "assistant-test-foreign-image:latest"
    docker_client().images.build(path=str(context), tag=tag, rm=True)
    data_dir = tmp_path / "data"
    try:
        config = SandboxConfig(data_dir=data_dir, backend="docker", image=tag, cache_enabled=False)
        prepared = prepare(PrepareRequest(job_id="foreign", repo=str(small_repo), setup=[]), config)
        try:
            result = prepared.sandbox.exec("id -u; echo $HOME; touch ~/written && echo home-writable")
            assert result.output == "1000\n/home/agent\nhome-writable\n"
        finally:
            prepared.sandbox.close()
    finally:
        docker_client().images.remove(tag, force=True)
