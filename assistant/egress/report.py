"""Blocked requests in words: log lines for a citable chunk, and a one-line summary that says how to
allow them, with the `[agent_internet]` table that would do it."""

from __future__ import annotations

from .policy import EgressPolicy
from .squid import ProxyRequest

SHOWN = 3


def blocked_lines(records: list[ProxyRequest]) -> str:
    """One line per refused request: when, status, method, target and the rule it broke."""
    return "".join(
        f"{r.time:%Y-%m-%dT%H:%M:%S.%f}"[:-3] + f"Z {r.status} {r.method} {r.target} — {r.reason}\n" for r in records
    )


def blocked_summary(records: list[ProxyRequest], policy: EgressPolicy) -> str:
    """"3 requests blocked: … — allow them with …", or "" when nothing was blocked."""
    if not records:
        return ""
    shown = ", ".join(f"{r.method} {r.target}" for r in records[:SHOWN])
    if len(records) > SHOWN:
        shown += f" and {len(records) - SHOWN} more"
    noun = "request" if len(records) == 1 else "requests"
    return (f"{len(records)} {noun} blocked: {shown} — allow them with this in the repository's "
            f".assistant/config.toml (or the same in the settings or the job request):\n{allow_table(records, policy)}")


def allow_table(records: list[ProxyRequest], policy: EgressPolicy) -> str:
    """The `[agent_internet]` table that keeps what the policy allows and adds what was refused."""
    domains = [d.pattern for d in policy.domains if not d.origin.startswith("preset ")]
    presets = list(dict.fromkeys(d.origin.removeprefix("preset ") for d in policy.domains
                                 if d.origin.startswith("preset ")))
    for record in records:
        if record.host and not policy.allows_host(record.host) and record.host not in domains:
            domains.append(record.host)
    methods = policy.methods.label
    refused_methods = {r.method for r in records if r.method != "CONNECT" and not policy.methods.permits(r.method)}
    if refused_methods:
        methods = ",".join(sorted(policy.methods.allowed | refused_methods))
    lines = ["[agent_internet]", 'mode = "allowlist"', f"domains = {_toml_list(domains)}"]
    if presets:
        lines.append(f"presets = {_toml_list(presets)}")
    lines.append(f'methods = "{methods}"')
    if policy.private_addresses:
        lines.append("private_addresses = true")
    elif any(r.reason and "private" in r.reason for r in records):
        lines.append("private_addresses = true  # a name led to a private address: only for a mirror you trust")
    return "\n".join(lines) + "\n"


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"
