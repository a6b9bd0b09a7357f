"""Egress fixtures on the real engine: the sandbox and proxy images (built once if missing), a plain job
container from the sandbox image attached to a gateway, and an HTTP server in a container of our own on
the proxies' outbound network (the only non-registry address any test aims at)."""

from __future__ import annotations

import json
import secrets
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from assistant.egress import EgressGateway, resolve_policy, spec_from_mapping
from assistant.egress.gateway import outbound_network
from assistant.egress.image import ensure_proxy_image
from assistant.sandbox import DEFAULT_IMAGE, SandboxConfig, SandboxError, build_image
from assistant.sandbox.engine import docker_client, ensure_docker

WEB_PORT = 8080
WEB_SERVER = r"""
import http.server
class Echo(http.server.BaseHTTPRequestHandler):
    def answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = f"{self.command} ok".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    do_GET = do_HEAD = do_POST = do_PUT = do_OPTIONS = answer
    def log_message(self, format, *args):
        print("served", self.command, self.path, flush=True)
server = http.server.ThreadingHTTPServer(("0.0.0.0", %d), Echo)
print("ready", flush=True)
server.serve_forever()
""" % WEB_PORT

# Runs inside the job container: one request through whatever proxy the environment names.
HTTP_CLIENT = r"""
import json, sys, urllib.error, urllib.request
method, url, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
data = b"payload" if method in ("POST", "PUT") else None
try:
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=timeout) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode()}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode(errors="replace")[:300]}))
except Exception as e:
    print(json.dumps({"error": str(e)}))
"""


@dataclass
class WebServer:
    name: str
    ip: str
    container: object

    def url(self, path: str) -> str:
        return f"http://{self.name}:{WEB_PORT}{path}"

    def served(self) -> str:
        return self.container.logs(stdout=True, stderr=False).decode()


@pytest.fixture(scope="session")
def proxy_image() -> str:
    """The sandbox image and the proxy image on top of it, each built once when missing."""
    try:
        ensure_docker()
    except SandboxError as exc:
        pytest.fail(f"these tests need a Docker engine ({exc}); run ./test.sh, which starts one")
    build_image(SandboxConfig(data_dir=Path("/tmp/assistant-test-image-build")), on_log=lambda line: None)
    return ensure_proxy_image(on_log=lambda line: None)


@pytest.fixture(scope="module")
def web_server(proxy_image) -> WebServer:
    client = docker_client()
    name = f"egress-test-web-{secrets.token_hex(3)}"
    container = client.containers.run(DEFAULT_IMAGE, ["python3", "-c", WEB_SERVER], name=name, detach=True,
                                      network=outbound_network(client).name, labels={"assistant.test": "egress"})
    try:
        deadline = time.monotonic() + 20
        while b"ready" not in container.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        container.reload()
        ip = next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        yield WebServer(name, ip, container)
    finally:
        container.remove(force=True)


@pytest.fixture
def job(proxy_image):
    """Start a gateway for a policy table and a plain sandbox-image container attached to it, the way
    the job pipeline does at the end of setup (on the default bridge first, then the internal network)."""
    client = docker_client()
    started = []

    def make(table, network: str = "bridge"):
        policy = resolve_policy(spec_from_mapping(table, "the test"))
        handle = EgressGateway().start(policy, f"egress-test-{secrets.token_hex(2)}")
        container = client.containers.run(DEFAULT_IMAGE, ["sleep", "infinity"], detach=True, network=network,
                                          labels={"assistant.test": "egress"})
        started.append((handle, container))
        handle.attach(container)
        return handle, container

    yield make
    for handle, container in started:
        container.remove(force=True)
        handle.close()


def run(container, command: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = container.exec_run(["bash", "-c", command], environment=env or {})
    return result.exit_code, result.output.decode(errors="replace")


def http(container, method: str, url: str, env: dict[str, str] | None, timeout: float = 20) -> dict:
    code, output = run(container, shlex.join(["python3", "-c", HTTP_CLIENT, method, url, str(timeout)]), env)
    return json.loads(output.strip().splitlines()[-1])
