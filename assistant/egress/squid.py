"""The proxy's configuration, written from an EgressPolicy, and its access log, read back as typed records.

Squid, not tinyproxy: squid matches CONNECT targets by name (`dstdomain`, with `-n` so an address is
never turned into an allowed name by a reverse lookup), filters methods (`method`), refuses names that
resolve to private addresses (`dst`) and logs every decision with its method and target; tinyproxy has
no method rules and no address check."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

from .policy import EgressPolicy

PORT = 3128
CONFIG_PATH = "/etc/squid/egress.conf"
ACCESS_LOG = "/var/log/squid/access.log"
READY_MARK = "Accepting HTTP Socket connections"
DENIED = "TCP_DENIED"
TARGET_LIMIT = 2000
# Where an allowlisted name must not lead unless private addresses are allowed: this machine, the
# Docker networks, the LAN, link-local (cloud metadata services) and the reserved ranges.
PRIVATE_RANGES = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    "::1", "fc00::/7", "fe80::/10",
)
LOG_FORMAT = "%ts.%03tu %>a %Ss/%03>Hs %rm %ru"


def render_config(policy: EgressPolicy, client_subnet: str) -> str:
    """squid.conf for one job: only the job's network may use it; off refuses everything."""
    lines = [
        "# Written by assistant.egress for one job; see assistant/egress/squid.py.",
        f"http_port {PORT}",
        "pid_filename none",
        "pinger_enable off",
        "cache deny all",
        "cache_mem 8 MB",
        "shutdown_lifetime 1 seconds",
        "logfile_rotate 0",
        f"logformat egress {LOG_FORMAT}",
        f"access_log stdio:{ACCESS_LOG} logformat=egress",
        "cache_log stdio:/dev/stderr",
        "forwarded_for delete",
        "via off",
        "httpd_suppress_version_string on",
        f"acl job_network src {client_subnet}",
        "http_access deny !job_network",
    ]
    if not policy.allowlist:
        return "\n".join(lines + ["http_access deny all", ""])
    lines += [
        "acl CONNECT method CONNECT",
        f"acl allowed_hosts dstdomain -n {' '.join(_squid_domain(d.pattern) for d in policy.domains)}",
        f"acl tls_ports port {' '.join(map(str, policy.tls_ports))}",
        "http_access deny !allowed_hosts",
        "http_access deny CONNECT !tls_ports",
    ]
    if policy.methods.allowed is not None:
        lines += [f"acl allowed_methods method {' '.join(sorted(policy.methods.allowed))}",
                  "http_access deny !CONNECT !allowed_methods"]
    if not policy.private_addresses:
        lines += [f"acl private_destination dst {' '.join(PRIVATE_RANGES)}",
                  "http_access deny private_destination"]
    return "\n".join(lines + ["http_access allow job_network", "http_access deny all", ""])


def _squid_domain(pattern: str) -> str:
    # squid's ".example.org" is example.org and every name under it, which is what *.example.org means here.
    return "." + pattern[2:] if pattern.startswith("*.") else pattern


@dataclass(frozen=True)
class ProxyRequest:
    """One request the proxy decided on. `target` is the URL, or host:port for an HTTPS tunnel (CONNECT)."""
    time: datetime
    host: str
    method: str
    target: str
    status: int
    result: str  # squid's result code: TCP_DENIED, TCP_TUNNEL, TCP_MISS, ...
    reason: str | None  # for a blocked request, the rule it broke

    @property
    def blocked(self) -> bool:
        return self.result == DENIED


def parse_access_log(text: str, policy: EgressPolicy) -> list[ProxyRequest]:
    """Records from the log LOG_FORMAT writes. Skipped: a last line squid is still writing (no newline
    yet), lines that do not parse, and connections closed before sending a request (method "-", such
    as a reachability probe)."""
    records = []
    lines = text.split("\n")[:-1]  # the part after the last newline is unfinished or empty
    for line in lines:
        fields = line.split(" ", 4)
        if len(fields) != 5 or fields[3] == "-":
            continue
        stamp, _client, outcome, method, target = fields
        result, _, status = outcome.partition("/")
        try:
            when = datetime.fromtimestamp(float(stamp), tz=timezone.utc)
            code = int(status)
        except ValueError:
            continue
        host, port = _host_and_port(method, target)
        blocked = result == DENIED
        records.append(ProxyRequest(
            time=when, host=host, method=method, target=target[:TARGET_LIMIT], status=code, result=result,
            reason=policy.why_blocked(host, method, port) if blocked else None,
        ))
    return records


def _host_and_port(method: str, target: str) -> tuple[str, int | None]:
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        return host.strip("[]").lower(), int(port) if port.isdigit() else None
    try:
        parts = urlsplit(target)
        return (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "", None
