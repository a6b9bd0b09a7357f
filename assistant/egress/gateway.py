"""One filtering proxy per job: the only way out of the job's internal network in the agent phase.

    gateway = EgressGateway()
    handle = gateway.start(policy, job_id)      # proxy container + the job's internal network
    handle.attach(container)                    # the job's container: that network only
    handle.verify(run)                          # from inside: lo + that network, proxy reachable, no bypass
    ... commands run with handle.proxy_env() ...
    handle.blocked_requests()                   # typed records from the proxy's access log
    handle.close()                              # proxy and network removed; the records stay readable

A proxy per job rather than one shared: each job's policy is its own squid.conf (no reload racing other
jobs), its log holds only its requests, a crash or a hostile client touches one job, and the network
ends with the job. It costs one small container (~1 s to start, a few MB of memory).

The internal network is `--internal` (no route out) and has no address on this machine's side
(`inhibit_ipv4`): a plain internal network still lets its containers reach every service of this
machine through the bridge's gateway address, which the verification here checks is closed."""

from __future__ import annotations

import io
import json
import logging
import secrets
import shlex
import tarfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from ..sandbox.base import DEFAULT_IMAGE, SandboxError
from ..sandbox.engine import JOB_LABEL, MANAGED_LABEL, OWNER_LABEL, docker_client, owner_tag
from ..procs import tag_alive
from .image import EGRESS_IMAGE, ensure_proxy_image
from .policy import EgressPolicy
from .squid import ACCESS_LOG, CONFIG_PATH, PORT, READY_MARK, ProxyRequest, parse_access_log, render_config

log = logging.getLogger(__name__)

OUTBOUND_NETWORK = "assistant-egress-outbound"
EGRESS_LABEL = "assistant.egress"  # "proxy" | "internal" | "outbound"
INHIBIT_IPV4 = "com.docker.network.bridge.inhibit_ipv4"
PROXY_MEMORY = "256m"
PROXY_PIDS = 64
READY_TIMEOUT_S = 20.0
PROBE_TIMEOUT_S = 1.0
NO_PROXY = "localhost,127.0.0.1,::1"
REACHED = ("connected", "refused")  # a refusal is an answer: the address was reachable

_outbound_lock = threading.Lock()


class EgressError(SandboxError):
    """The egress proxy could not be set up or the job's network is not confined as promised."""


@dataclass(frozen=True)
class EgressCheck:
    """What the job's container sees: its interfaces, and each address it tried to reach (outcome)."""
    interfaces: tuple[str, ...]
    probes: dict[str, str]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


_VERIFY_SCRIPT = r"""
import json, os, socket, sys, threading
request = json.loads(sys.argv[1])
outcomes = {}
def probe(label, host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(request["timeout"])
    try:
        s.connect((host, port))
        outcomes[label] = "connected"
    except ConnectionRefusedError:
        outcomes[label] = "refused"
    except socket.timeout:
        outcomes[label] = "timed out"
    except OSError as exc:
        outcomes[label] = os.strerror(exc.errno) if exc.errno else str(exc)
    finally:
        s.close()
threads = [threading.Thread(target=probe, args=(label, host, port)) for label, (host, port) in request["probes"].items()]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"interfaces": sorted(os.listdir("/sys/class/net")), "probes": outcomes}))
"""


class EgressHandle:
    """A running proxy and the job's internal network; see the module docstring for the order of calls."""

    def __init__(self, *, job_id: str, policy: EgressPolicy, container, network, proxy_ip: str,
                 bypass_targets: dict[str, str], outbound_network: str, subnet: str):
        self.job_id = job_id
        self.policy = policy
        self.network: str = network.name
        self.outbound_network = outbound_network
        self.subnet = subnet
        self.proxy_url = f"http://{proxy_ip}:{PORT}"
        self._proxy_ip = proxy_ip
        self._bypass_targets = bypass_targets
        self._container = container
        self._network = network
        self._lock = threading.Lock()
        self._closed = False
        self._final_log: str | None = None

    # ------------------------------------------------------------------ the job's side
    def proxy_env(self) -> dict[str, str]:
        """Variables for every command of the agent phase; loopback stays direct."""
        return {"HTTP_PROXY": self.proxy_url, "HTTPS_PROXY": self.proxy_url, "http_proxy": self.proxy_url,
                "https_proxy": self.proxy_url, "NO_PROXY": NO_PROXY, "no_proxy": NO_PROXY}

    def attach(self, container) -> None:
        """Leave every other network and join the internal one (a container object or its id)."""
        client = docker_client()
        if isinstance(container, str):
            container = client.containers.get(container)
        container.reload()
        for name in list(container.attrs["NetworkSettings"].get("Networks") or {}):
            if name != self.network:
                client.networks.get(name).disconnect(container, force=True)
        container.reload()
        if self.network not in (container.attrs["NetworkSettings"].get("Networks") or {}):
            self._network.connect(container)
        container.reload()
        joined = sorted(container.attrs["NetworkSettings"].get("Networks") or {})
        if joined != [self.network]:
            raise EgressError(f"the job's container is on networks {joined} instead of only {self.network}")

    def verification_command(self) -> str:
        """A shell command for the job's container that reports what it can reach, as one JSON line."""
        probes = {"proxy": [self._proxy_ip, PORT], **{label: [address, PORT]
                                                      for label, address in self._bypass_targets.items()}}
        request = json.dumps({"timeout": PROBE_TIMEOUT_S, "probes": probes})
        return f"python3 -c {shlex.quote(_VERIFY_SCRIPT)} {shlex.quote(request)}"

    def check(self, output: str) -> EgressCheck:
        """Judge the verification command's output: `lo` plus one interface, the proxy answers, and none
        of the addresses beyond the internal network (the proxy's outbound side, this machine) does."""
        report = next((json.loads(line) for line in reversed(output.splitlines()) if line.startswith("{")), None)
        if report is None:
            return EgressCheck((), {}, (f"the verification printed no report: {output[-300:]!r}",))
        interfaces = tuple(report["interfaces"])
        probes = dict(report["probes"])
        problems = []
        if "lo" not in interfaces or len(interfaces) != 2:
            problems.append(f"interfaces are {list(interfaces)}, expected lo and the job's internal network")
        if probes.get("proxy") != "connected":
            problems.append(f"the proxy at {self.proxy_url} did not answer ({probes.get('proxy')})")
        for label in self._bypass_targets:
            if probes.get(label) in REACHED or label not in probes:
                problems.append(f"{label} was reachable directly, bypassing the proxy ({probes.get(label)})")
        return EgressCheck(interfaces, probes, tuple(problems))

    def verify(self, run: Callable[[str], str]) -> EgressCheck:
        """Run the verification through `run` (command -> its output) and refuse to go on if it fails."""
        result = self.check(run(self.verification_command()))
        if not result.ok:
            raise EgressError("the agent's network is not confined to the proxy: " + "; ".join(result.problems))
        return result

    # ------------------------------------------------------------------ what the proxy saw
    def requests(self) -> list[ProxyRequest]:
        """Every request the proxy decided on, oldest first; after close(), as they were at close."""
        return parse_access_log(self._read_log(), self.policy)

    def blocked_requests(self, since: datetime | None = None) -> list[ProxyRequest]:
        """The refused ones, optionally only those at or after `since` (to pin them on one command)."""
        return [r for r in self.requests() if r.blocked and (since is None or r.time >= since)]

    def _read_log(self) -> str:
        with self._lock:
            if self._final_log is not None:
                return self._final_log
            return self._fetch_log()

    def _fetch_log(self) -> str:
        try:
            result = self._container.exec_run(["cat", ACCESS_LOG], user="proxy", stdout=True, stderr=False)
        except Exception as exc:
            raise EgressError(f"could not read the egress proxy's log: {exc}") from exc
        return result.output.decode(errors="replace") if result.exit_code == 0 else ""

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Remove the proxy and the network (disconnecting whatever is still on it); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._final_log = self._fetch_log()
            except EgressError:
                self._final_log = ""
            _remove_container(self._container)
            _remove_network(self._network)

    def __enter__(self) -> "EgressHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EgressGateway:
    """Starts a proxy per job from the locally built proxy image (built on first use if missing)."""

    def __init__(self, image: str = EGRESS_IMAGE, base_image: str = DEFAULT_IMAGE,
                 on_log: Callable[[str], None] = log.info, engine=None):
        self.image = image
        self.base_image = base_image
        self._on_log = on_log
        self.engine = engine  # an engine of ASSISTANT_DOCKER_HOSTS: the proxy must run where the sandbox runs

    def start(self, policy: EgressPolicy, job_id: str) -> EgressHandle:
        """The job's internal network and its proxy, ready. With policy `off` the proxy refuses every
        request and records it, which tells a user what the agent tried to reach."""
        if self.engine is None:
            ensure_proxy_image(self.image, self.base_image, on_log=self._on_log)
        client = docker_client(self.engine)
        if self.engine is not None:
            _require_image(client, self.image, self.engine)
        outbound = outbound_network(client)
        name = f"assistant-egress-{_safe(job_id)}-{secrets.token_hex(3)}"
        labels = {MANAGED_LABEL: "1", JOB_LABEL: job_id, OWNER_LABEL: owner_tag()}
        network = container = None
        try:
            network = _create_internal_network(client, name, labels)
            subnet, internal_gateway = _ipam(network)
            container = client.containers.create(
                self.image, name=name, network=outbound.name, user="proxy", detach=True,
                cap_drop=["ALL"], security_opt=["no-new-privileges"], mem_limit=PROXY_MEMORY,
                memswap_limit=PROXY_MEMORY, pids_limit=PROXY_PIDS, labels={**labels, EGRESS_LABEL: "proxy"},
            )
            container.put_archive("/etc/squid", _file_archive(CONFIG_PATH.rpartition("/")[2],
                                                              render_config(policy, subnet)))
            network.connect(container)
            container.start()
            _wait_ready(container)
            container.reload()
            addresses = container.attrs["NetworkSettings"]["Networks"]
            bypass = {
                "the internal network's gateway address": internal_gateway,
                "the proxy's outbound address": addresses[outbound.name]["IPAddress"],
                "this machine on the outbound network": addresses[outbound.name]["Gateway"],
            }
            return EgressHandle(job_id=job_id, policy=policy, container=container, network=network,
                                proxy_ip=addresses[network.name]["IPAddress"], bypass_targets=bypass,
                                outbound_network=outbound.name, subnet=subnet)
        except Exception as exc:
            if container is not None:
                _remove_container(container)
            if network is not None:
                _remove_network(network)
            if isinstance(exc, SandboxError):
                raise
            raise EgressError(f"could not start the egress proxy: {_explain(exc)}") from exc


def sweep_orphan_egress() -> int:
    """Remove proxies and internal networks whose server process is gone; returns how many."""
    client = docker_client()
    removed = 0
    for container in client.containers.list(ignore_removed=True, all=True, filters={"label": EGRESS_LABEL}):
        if not tag_alive(container.labels.get(OWNER_LABEL)):
            _remove_container(container)
            removed += 1
    for network in client.networks.list(filters={"label": f"{EGRESS_LABEL}=internal"}):
        if not tag_alive((network.attrs.get("Labels") or {}).get(OWNER_LABEL)):
            _remove_network(network)
            removed += 1
    return removed


# ---------------------------------------------------------------------------------------------- helpers
def _require_image(client, image: str, engine) -> None:
    """A pool engine gets its images pushed, never built behind a job's back."""
    try:
        client.images.get(image)
    except Exception:
        raise EgressError(f"the egress proxy image {image} is not on engine {engine.name}: build it here "
                          f"(`assistant egress build`) and copy it there (`assistant sandbox push {engine.name} "
                          f"--egress`)") from None


def outbound_network(client=None):
    """The shared network the proxies reach the internet from (and where tests put their servers); made
    once, kept."""
    import docker

    client = client or docker_client()
    with _outbound_lock:
        for attempt in range(2):
            found = [n for n in client.networks.list(names=[OUTBOUND_NETWORK]) if n.name == OUTBOUND_NETWORK]
            if found:
                return found[0]
            try:
                return client.networks.create(OUTBOUND_NETWORK, driver="bridge", check_duplicate=True,
                                              labels={MANAGED_LABEL: "1", EGRESS_LABEL: "outbound"})
            except docker.errors.APIError:
                if attempt:
                    raise  # another process made it in between: the second look finds it


def _create_internal_network(client, name: str, labels: dict[str, str]):
    network = client.networks.create(name, driver="bridge", internal=True, check_duplicate=True,
                                     options={INHIBIT_IPV4: "true"}, labels={**labels, EGRESS_LABEL: "internal"})
    network.reload()
    return network


def _ipam(network) -> tuple[str, str]:
    config = (network.attrs.get("IPAM") or {}).get("Config") or []
    if not config or not config[0].get("Subnet"):
        raise EgressError(f"the network {network.name} has no IPv4 subnet")
    return config[0]["Subnet"], config[0].get("Gateway", "")


def _wait_ready(container) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        if READY_MARK in output:
            return
        container.reload()
        if container.status == "exited" or "FATAL" in output or time.monotonic() > deadline:
            raise EgressError(f"the egress proxy did not start ({container.status}):\n{output[-1500:]}")
        time.sleep(0.05)


def _file_archive(name: str, text: str) -> bytes:
    data = text.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _remove_container(container) -> None:
    try:
        container.remove(force=True)
    except Exception:
        pass  # already gone


def _remove_network(network) -> None:
    try:
        network.reload()
        for member in network.containers:
            network.disconnect(member, force=True)
        network.remove()
    except Exception as exc:
        if "not found" not in str(exc).lower():
            log.warning("could not remove the egress network %s: %s", network.name, exc)


def _safe(job_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in job_id)[:40] or "job"


def _explain(exc: Exception) -> str:
    text = str(getattr(exc, "explanation", None) or exc)
    if "available, non-overlapping" in text or "address pool" in text:
        return (f"{text}. Each job with agent internet uses one Docker network and the engine's address pools "
                "are used up: end some jobs, or give dockerd more room with `default-address-pools`")
    return text
