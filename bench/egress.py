"""Agent-internet benchmark: what an allowlist costs next to the peer way of the agent phase (offline).

    python bench/egress.py [--runs 5] [--requests 50]

Measures, in one run:
  go online    gateway start + attach + verification  vs  disconnecting every network + checking `lo`
  requests     N plain-HTTP GETs to a server container: through the proxy  vs  directly on the same network
  close        gateway close (proxy and network removed)
Prints a table and writes bench/results/egress.json (medians and ratios). No traffic leaves this machine.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.egress import EgressGateway, resolve_policy, spec_from_mapping  # noqa: E402
from assistant.egress.gateway import outbound_network  # noqa: E402
from assistant.egress.image import ensure_proxy_image  # noqa: E402
from assistant.sandbox import DEFAULT_IMAGE  # noqa: E402
from assistant.sandbox.engine import docker_client, ensure_docker  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "egress.json"
SERVER = ("import http.server\n"
          "class H(http.server.BaseHTTPRequestHandler):\n"
          "    def do_GET(self):\n"
          "        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers()\n"
          "        self.wfile.write(b'ok')\n"
          "    def log_message(self, *a): pass\n"
          "s = http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H); print('ready', flush=True); s.serve_forever()\n")
CLIENT = ("import sys, time, urllib.request\n"
          "url, n = sys.argv[1], int(sys.argv[2])\n"
          "t = time.perf_counter()\n"
          "for _ in range(n): urllib.request.urlopen(url, timeout=10).read()\n"
          "print((time.perf_counter() - t) / n)\n")


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def run(container, command: list[str], env: dict[str, str] | None = None) -> str:
    result = container.exec_run(command, environment=env or {})
    if result.exit_code != 0:
        raise RuntimeError(result.output.decode(errors="replace"))
    return result.output.decode()


def go_offline(client, container) -> None:
    container.reload()
    for name in list(container.attrs["NetworkSettings"]["Networks"]):
        client.networks.get(name).disconnect(container, force=True)
    assert run(container, ["ls", "/sys/class/net"]).split() == ["lo"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    ensure_docker()
    ensure_proxy_image(on_log=lambda line: None)
    client = docker_client()
    outbound = outbound_network(client).name
    server_name = f"bench-egress-web-{secrets.token_hex(3)}"
    server = client.containers.run(DEFAULT_IMAGE, ["python3", "-c", SERVER], name=server_name, detach=True,
                                   network=outbound)
    policy = resolve_policy(spec_from_mapping({"mode": "allowlist", "domains": [server_name],
                                               "private_addresses": True}, "the benchmark"))
    gateway = EgressGateway()
    online, offline, closing, proxied, direct = [], [], [], [], []
    try:
        while b"ready" not in server.logs():
            time.sleep(0.05)
        url = f"http://{server_name}:8080/"
        for index in range(args.runs):
            job = client.containers.run(DEFAULT_IMAGE, ["sleep", "infinity"], detach=True, network="bridge")
            peer = client.containers.run(DEFAULT_IMAGE, ["sleep", "infinity"], detach=True, network="bridge")
            try:
                def start():
                    handle = gateway.start(policy, f"bench-{index}")
                    handle.attach(job)
                    handle.verify(lambda command: run(job, ["bash", "-c", command]))
                    return handle
                seconds, handle = timed(start)
                online.append(seconds)
                offline.append(timed(lambda: go_offline(client, peer))[0])
                proxied.append(float(run(job, ["python3", "-c", CLIENT, url, str(args.requests)], handle.proxy_env())))
                client.networks.get(outbound).connect(peer)
                direct.append(float(run(peer, ["python3", "-c", CLIENT, url, str(args.requests)])))
                closing.append(timed(handle.close)[0])
            finally:
                job.remove(force=True)
                peer.remove(force=True)
    finally:
        server.remove(force=True)
    med = {name: statistics.median(values) for name, values in
           [("online_s", online), ("offline_s", offline), ("close_s", closing),
            ("request_proxied_ms", [v * 1000 for v in proxied]), ("request_direct_ms", [v * 1000 for v in direct])]}
    rows = [
        ("go online by allowlist (start+attach+verify)", med["online_s"], "s", "go offline (disconnect+check)",
         med["offline_s"]),
        ("one GET through the proxy", med["request_proxied_ms"], "ms", "one GET direct", med["request_direct_ms"]),
        ("close (proxy + network removed)", med["close_s"], "s", "", None),
    ]
    print(f"{'measure':<46} {'ours':>9}  {'peer':<32} {'peer value':>10}  ratio")
    for name, ours, unit, peer_name, peer_value in rows:
        ratio = f"{ours / peer_value:.1f}x" if peer_value else ""
        peer_text = f"{peer_value:.3f} {unit}" if peer_value is not None else ""
        print(f"{name:<46} {ours:>7.3f} {unit:<2} {peer_name:<32} {peer_text:>10}  {ratio}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"runs": args.runs, "requests": args.requests, "medians": med,
                                   "ratios": {"online_vs_offline": med["online_s"] / med["offline_s"],
                                              "proxied_vs_direct": med["request_proxied_ms"] / med["request_direct_ms"]}},
                                  indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
