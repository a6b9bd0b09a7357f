"""The gateway on the real engine: a job container on the internal network gets out only through the
proxy and only where the policy says; refusals come back as typed records.

Traffic goes only to the Python package index (hosts from pip's own configuration) and to our own
server container; the npm registry's name (from npm's configuration) reaches the proxy and no further."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest

from assistant.egress import EgressError, sweep_orphan_egress
from assistant.egress.gateway import REACHED
from assistant.egress.image import RECIPE, RECIPE_LABEL, ensure_proxy_image
from assistant.sandbox.engine import docker_client

from .conftest import WEB_PORT, http, run

pytestmark = pytest.mark.docker

PYTHON_INDEX_ONLY = {"mode": "allowlist", "presets": ["python-packages"]}
PACKAGE = "six"  # one small wheel
WITHOUT_PROXY: dict[str, str] = {}


def pip_download(container, env, target: str, *extra: str) -> tuple[int, str]:
    return run(container, f"pip download --no-deps --no-cache-dir {' '.join(extra)} -d {target} {PACKAGE} "
                          f"&& ls {target}", env)


@pytest.fixture(scope="module")
def python_job(proxy_image):
    """One gateway allowing the Python package index only, shared by the tests of that policy."""
    from assistant.egress import EgressGateway, resolve_policy, spec_from_mapping
    client = docker_client()
    handle = EgressGateway().start(resolve_policy(spec_from_mapping(PYTHON_INDEX_ONLY, "the test")), "egress-test-py")
    container = client.containers.run("assistant-sandbox:latest", ["sleep", "infinity"], detach=True,
                                      network="bridge", labels={"assistant.test": "egress"})
    try:
        handle.attach(container)
        yield handle, container
    finally:
        container.remove(force=True)
        handle.close()


def _recent() -> datetime:
    return datetime.now(timezone.utc) - timedelta(seconds=1)


def test_pip_download_works_through_a_python_index_allowlist(python_job):
    handle, container = python_job
    code, output = pip_download(container, handle.proxy_env(), "/tmp/through-proxy")
    assert code == 0, output
    assert ".whl" in output
    tunnels = [r for r in handle.requests() if r.method == "CONNECT"]
    assert tunnels and not any(r.blocked for r in tunnels)
    assert {r.host for r in tunnels} <= {d.pattern for d in handle.policy.domains}


def test_the_npm_registry_is_blocked_and_reported(python_job):
    npm = shutil.which("npm")
    if not npm:
        pytest.skip("npm is not installed here, so there is no npm registry setting to take the host from")
    registry = subprocess.run([npm, "config", "get", "registry"], capture_output=True, text=True).stdout.strip()
    host = urlsplit(registry).hostname
    handle, container = python_job
    since = _recent()
    answer = http(container, "GET", registry, handle.proxy_env())
    assert "403" in answer.get("error", "") or answer.get("status") == 403, answer
    blocked = [r for r in handle.blocked_requests(since) if r.host == host]
    assert blocked, handle.requests()
    record = blocked[-1]
    assert record.status == 403 and record.method in ("CONNECT", "GET")
    assert record.reason == f"{host} is not on the allowlist"
    assert host in record.target and record.time >= since


def test_a_direct_connection_that_skips_the_proxy_fails(python_job):
    handle, container = python_job
    check = handle.verify(lambda command: run(container, command)[1])
    assert "lo" in check.interfaces and len(check.interfaces) == 2
    assert check.probes["proxy"] == "connected"
    assert all(outcome not in REACHED for label, outcome in check.probes.items() if label != "proxy")
    code, output = pip_download(container, WITHOUT_PROXY, "/tmp/direct", "--retries", "0", "--timeout", "5")
    assert code != 0, output


def test_read_only_refuses_a_post_to_an_allowed_host(web_server, job):
    handle, container = job({"mode": "allowlist", "domains": [web_server.name], "methods": "read-only",
                             "private_addresses": True})
    env = handle.proxy_env()
    url = web_server.url("/read-only")
    assert http(container, "GET", url, env) == {"status": 200, "body": "GET ok"}
    assert http(container, "HEAD", url, env)["status"] == 200
    refused = http(container, "POST", url, env)
    assert refused["status"] == 403
    [blocked] = handle.blocked_requests()
    assert (blocked.method, blocked.host, blocked.target, blocked.status) == ("POST", web_server.name, url, 403)
    assert blocked.reason == "POST is not allowed (methods: read-only)"
    served = web_server.served()
    assert "served GET /read-only" in served and "served POST /read-only" not in served


def test_all_methods_let_the_post_through(web_server, job):
    handle, container = job({"mode": "allowlist", "domains": [web_server.name], "methods": "all",
                             "private_addresses": True})
    assert http(container, "POST", web_server.url("/all"), handle.proxy_env()) == {"status": 200, "body": "POST ok"}
    assert handle.blocked_requests() == []


def test_an_address_is_not_a_name_and_a_bypass_reaches_nothing(web_server, job):
    handle, container = job({"mode": "allowlist", "domains": [web_server.name], "private_addresses": True})
    by_address = f"http://{web_server.ip}:{WEB_PORT}/by-address"
    assert http(container, "GET", by_address, handle.proxy_env())["status"] == 403
    assert handle.blocked_requests()[0].reason == f"{web_server.ip} is not on the allowlist"
    direct = http(container, "GET", by_address, {}, timeout=3)
    assert "error" in direct, direct
    assert "/by-address" not in web_server.served()


def test_names_that_lead_to_private_addresses_are_refused_by_default(web_server, job):
    handle, container = job({"mode": "allowlist", "domains": [web_server.name]})
    assert http(container, "GET", web_server.url("/private"), handle.proxy_env())["status"] == 403
    assert "private" in handle.blocked_requests()[0].reason
    assert "/private" not in web_server.served()


def test_off_lets_nothing_out_and_reports_what_was_tried(web_server, job):
    handle, container = job("off", network="none")
    handle.verify(lambda command: run(container, command)[1])
    env = handle.proxy_env()
    assert http(container, "GET", web_server.url("/off"), env)["status"] == 403
    code, output = pip_download(container, env, "/tmp/off", "--retries", "0", "--timeout", "5")
    assert code != 0, output
    blocked = handle.blocked_requests()
    assert {r.host for r in blocked} >= {web_server.name}
    assert any(r.method == "CONNECT" for r in blocked)
    assert all(r.reason == "agent internet is off" for r in blocked)
    assert "/off" not in web_server.served()


def test_close_removes_proxy_and_network_and_keeps_the_records(web_server, job):
    handle, container = job({"mode": "allowlist", "domains": [web_server.name], "private_addresses": True})
    http(container, "DELETE", web_server.url("/close"), handle.proxy_env())
    handle.close()
    handle.close()
    client = docker_client()
    assert not client.networks.list(names=[handle.network])
    assert not client.containers.list(ignore_removed=True, all=True, filters={"label": "assistant.job=" + handle.job_id})
    assert [r.method for r in handle.blocked_requests()] == ["DELETE"]
    container.reload()
    assert container.attrs["NetworkSettings"]["Networks"] == {}


def test_attach_refuses_nothing_silently(job):
    handle, container = job("off")
    container.reload()
    assert list(container.attrs["NetworkSettings"]["Networks"]) == [handle.network]
    docker_client().networks.get("bridge").connect(container)
    with pytest.raises(EgressError, match="not confined"):
        handle.verify(lambda command: run(container, command)[1])


def test_gateways_of_a_dead_process_are_swept(proxy_image):
    script = ("from assistant.egress import EgressGateway, resolve_policy; "
              "print(EgressGateway().start(resolve_policy(), 'egress-test-orphan').network)")
    network = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    client = docker_client()
    assert client.networks.list(names=[network])
    assert sweep_orphan_egress() >= 2
    assert not client.networks.list(names=[network])
    assert not client.containers.list(ignore_removed=True, all=True, filters={"label": "assistant.job=egress-test-orphan"})


def test_the_proxy_image_is_built_once_and_reused(proxy_image):
    client = docker_client()
    before = client.images.get(proxy_image)
    assert ensure_proxy_image(proxy_image, on_log=lambda line: pytest.fail(f"rebuilt: {line}")) == proxy_image
    after = client.images.get(proxy_image)
    assert after.id == before.id and after.labels[RECIPE_LABEL] == RECIPE


def test_the_cli_entry_point_reuses_the_image(proxy_image, capsys, monkeypatch, tmp_path):
    from assistant.cli import main
    monkeypatch.setenv("ASSISTANT_CONFIG", str(tmp_path / "none.toml"))
    assert main(["egress", "build"]) == 0
    assert capsys.readouterr().out.strip() == proxy_image
