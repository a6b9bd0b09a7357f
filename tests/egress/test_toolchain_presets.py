"""The go-modules, ruby-gems and php-packages presets read hosts from the clients' own configuration: on this
machine when it has the client, else in the toolchain image (the agent's own client). No host name is written
here: what each client says is the expectation."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from assistant.egress.policy import EgressPolicyError, EgressSpec, resolve_policy
from assistant.egress.presets import GO_MODULES, go_module_hosts, toolchain_client_hosts


def runner(outputs: dict[str, str | None]):
    """A client whose answers are given: (program, first argument) -> its standard output."""
    return lambda argv: outputs.get(" ".join(argv[:2]))


def test_go_preset_takes_every_proxy_and_the_checksum_database():
    env = {"GOPROXY": "https://proxy.example.invalid,https://mirror.example.invalid:8443|direct",
           "GOSUMDB": "sum.example.invalid"}
    found = go_module_hosts(runner({"go env": json.dumps(env)}))
    assert found.hosts == ("proxy.example.invalid", "mirror.example.invalid", "sum.example.invalid")
    assert found.tls_ports == (8443,)
    assert any("direct" in note for note in found.notes)

    keyed = {"GOPROXY": "off", "GOSUMDB": "sumdb.example.invalid+abc123 https://lookup.example.invalid/sumdb"}
    assert go_module_hosts(runner({"go env": json.dumps(keyed)})).hosts == ("lookup.example.invalid",)
    assert go_module_hosts(runner({"go env": json.dumps({"GOPROXY": "direct", "GOSUMDB": "off"})})).hosts == ()
    failed = go_module_hosts(runner({}))
    assert failed.hosts == () and "`go env` gave no answer" in failed.notes


def test_ruby_and_php_presets_read_the_clients_sources():
    gem = "*** CURRENT SOURCES ***\n\nhttps://gems.example.invalid/\nhttp://other.example.invalid/\n"
    found = toolchain_client_hosts("ruby-gems", runner({"gem sources": gem}))
    assert found.hosts == ("gems.example.invalid", "other.example.invalid")
    composer = ("[repo-packagist-org.type] composer\n[repositories.packagist.org.type] composer\n"
                "[repositories.packagist.org.url] https://repo.example.invalid\n[process-timeout] 300\n")
    assert toolchain_client_hosts("php-packages", runner({"composer config": composer})).hosts == ("repo.example.invalid",)


@pytest.mark.docker
def test_go_preset_reads_go_env_in_the_go_toolchain_image(docker_engine, monkeypatch):
    """This machine has no go command: the preset asks the go of the toolchain image, offline."""
    from assistant.sandbox import DEFAULT_IMAGE
    from assistant.sandbox.engine import docker_client
    from assistant.sandbox.toolchains import ensure_toolchain_image

    monkeypatch.setenv("PATH", "/nonexistent")  # as on a machine without the client, whatever this one has
    image = ensure_toolchain_image(DEFAULT_IMAGE, ["go"], on_log=lambda _line: None)
    said = json.loads(docker_client().containers.run(image, ["go", "env", "-json", "GOPROXY", "GOSUMDB"],
                                                     network_mode="none", remove=True))
    proxies = [urlsplit(p).hostname for p in said["GOPROXY"].replace("|", ",").split(",") if "://" in p]
    found = toolchain_client_hosts(GO_MODULES)
    assert proxies and found.hosts[:len(proxies)] == tuple(proxies)
    assert f"read from go in the toolchain image {image}" in found.notes

    # As an allowlist preset: the policy allows exactly those hosts, and says where they came from.
    policy = resolve_policy(EgressSpec("settings", mode="allowlist", presets=(GO_MODULES,)), backend="docker")
    assert all(policy.allows_host(host) for host in found.hosts) and not policy.allows_host("other.example.invalid")


def test_a_toolchain_preset_without_client_or_image_says_how_to_get_one(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")  # no engine either
    from assistant.sandbox import engine
    monkeypatch.setattr(engine, "_clients", {})  # not the client an earlier test made to this machine's engine
    found = toolchain_client_hosts("ruby-gems")
    assert found.hosts == () and "`assistant sandbox build --lang ruby`" in found.notes[0]
    with pytest.raises(EgressPolicyError, match="preset ruby-gems found no hosts on this machine"):
        resolve_policy(EgressSpec("settings", mode="allowlist", presets=("ruby-gems",)), backend="docker")
