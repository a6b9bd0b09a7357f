"""What the agent may reach in the agent phase: the settings, a repository's `.assistant/config.toml` and a
job request, each a layer (`EgressSpec`), resolved into one typed `EgressPolicy`.

Data only (no Docker), so the settings can validate their values with the same parser."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping

from .presets import PRESETS, PresetHosts, preset_hosts

Mode = Literal["off", "allowlist"]
MODES: tuple[str, ...] = ("off", "allowlist")
READ_ONLY = "read-only"
ALL_METHODS = "all"
READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HTTPS_PORT = 443
REPO_CONFIG = ".assistant/config.toml"
REPO_TABLE = "agent_internet"
SPEC_KEYS = ("mode", "domains", "presets", "methods", "private_addresses")

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_METHOD = re.compile(r"^[A-Z][A-Z-]{0,31}$")


class EgressPolicyError(ValueError):
    """A bad agent-internet setting: the message says where it came from and what is accepted."""


# ---------------------------------------------------------------------------------------------- values
@dataclass(frozen=True)
class AllowedDomain:
    """`example.org` (that name only) or `*.example.org` (example.org and every name under it)."""
    pattern: str
    origin: str  # "settings", "the repository", "the job request" or "preset python-packages"

    @property
    def wildcard(self) -> bool:
        return self.pattern.startswith("*.")

    @property
    def base(self) -> str:
        return self.pattern[2:] if self.wildcard else self.pattern

    def matches(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host == self.base or (self.wildcard and host.endswith("." + self.base))


@dataclass(frozen=True)
class MethodRule:
    """The HTTP methods allowed; `allowed` None means every method."""
    label: str  # "read-only", "all" or the listed methods, as the user wrote them
    allowed: frozenset[str] | None

    def permits(self, method: str) -> bool:
        return self.allowed is None or method.upper() in self.allowed


def parse_domain(text: str, where: str) -> str:
    """A host name or `*.` and a name, lower-cased; anything else is refused with the reason."""
    raw = str(text).strip().lower().rstrip(".")
    wildcard = raw.startswith("*.")
    name = raw[2:] if wildcard else raw

    def refuse(why: str) -> EgressPolicyError:
        return EgressPolicyError(f"{where}: {text!r} is not an allowed domain: {why}")

    if not name:
        raise refuse("it is empty; write a host name such as docs.example.org")
    if any(mark in name for mark in ("://", "/", ":", "@", " ")):
        raise refuse("name the host only, such as docs.example.org (no scheme, port, path or user)")
    if "*" in name:
        raise refuse("a wildcard may only open the name, as in *.example.org")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise refuse("addresses are not accepted (the proxy matches names); name the host")
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise refuse("it is not a valid host name") from None
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise refuse("a host name is letters, digits and hyphens in dot-separated labels")
    if wildcard and len(labels) < 2:
        raise refuse(f"*.{name} would open a whole top-level domain; name at least two labels, as *.example.org")
    return ("*." if wildcard else "") + name


def parse_domains(value: str | Iterable[str] | None, where: str) -> tuple[str, ...]:
    items = _items(value, where)
    return tuple(dict.fromkeys(parse_domain(item, where) for item in items))


def parse_presets(value: str | Iterable[str] | None, where: str) -> tuple[str, ...]:
    presets = tuple(dict.fromkeys(item.strip().lower() for item in _items(value, where)))
    unknown = [name for name in presets if name not in PRESETS]
    if unknown:
        raise EgressPolicyError(f"{where}: unknown preset {', '.join(map(repr, unknown))}; "
                                f"the presets are {', '.join(PRESETS)}")
    return presets


def parse_methods(value: str | Iterable[str], where: str) -> MethodRule:
    if isinstance(value, str) and value.strip().lower() in (READ_ONLY, ALL_METHODS):
        label = value.strip().lower()
        return MethodRule(label, READ_ONLY_METHODS if label == READ_ONLY else None)
    methods = tuple(dict.fromkeys(item.strip().upper() for item in _items(value, where)))
    if not methods:
        raise EgressPolicyError(f"{where}: no methods given; use read-only, all, or a list such as GET,HEAD,POST")
    for method in methods:
        if method == "CONNECT":
            raise EgressPolicyError(f"{where}: CONNECT cannot be listed: it is how HTTPS passes the proxy, and it "
                                    "is allowed to every allowlisted host")
        if not _METHOD.match(method):
            raise EgressPolicyError(f"{where}: {method!r} is not an HTTP method; use read-only, all, or a list "
                                    "such as GET,HEAD,POST")
    return MethodRule(",".join(methods), frozenset(methods))


def parse_mode(value: Any, where: str) -> Mode:
    mode = str(value).strip().lower()
    if mode not in MODES:
        raise EgressPolicyError(f"{where}: agent internet {value!r} is unknown; use off or allowlist")
    return mode  # type: ignore[return-value]


def _items(value: str | Iterable[str] | None, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [item for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return [item for item in value if item.strip()]
    raise EgressPolicyError(f"{where}: expected a list of strings or one comma-separated string, got {value!r}")


# ---------------------------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class EgressSpec:
    """One layer of settings; None means "not set in this layer", so a lower layer's value stands."""
    source: str
    mode: Mode | None = None
    domains: tuple[str, ...] | None = None
    presets: tuple[str, ...] | None = None
    methods: MethodRule | None = None
    private_addresses: bool | None = None


def spec_from_settings(settings: Any) -> EgressSpec:
    """The global layer, from the settings object's agent_internet_* fields."""
    where = "the settings"
    return EgressSpec(
        source=where,
        mode=parse_mode(settings.agent_internet, "ASSISTANT_AGENT_INTERNET"),
        domains=parse_domains(settings.agent_internet_domains, "ASSISTANT_AGENT_INTERNET_DOMAINS"),
        presets=parse_presets(settings.agent_internet_presets, "ASSISTANT_AGENT_INTERNET_PRESETS"),
        methods=parse_methods(settings.agent_internet_methods, "ASSISTANT_AGENT_INTERNET_METHODS"),
        private_addresses=bool(settings.agent_internet_private_addresses),
    )


def spec_from_mapping(value: Mapping[str, Any] | str, source: str) -> EgressSpec:
    """A layer written as data: a bare mode ("off") or a table with any of SPEC_KEYS."""
    if isinstance(value, str):
        return EgressSpec(source=source, mode=parse_mode(value, source))
    if not isinstance(value, Mapping):
        raise EgressPolicyError(f"{source}: expected off, allowlist or a table with {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(value) - set(SPEC_KEYS))
    if unknown:
        raise EgressPolicyError(f"{source}: unknown key {', '.join(map(repr, unknown))}; "
                                f"the keys are {', '.join(SPEC_KEYS)}")
    private = value.get("private_addresses")
    if private is not None and not isinstance(private, bool):
        raise EgressPolicyError(f"{source}: private_addresses must be true or false, got {private!r}")
    return EgressSpec(
        source=source,
        mode=parse_mode(value["mode"], f"{source} mode") if "mode" in value else None,
        domains=parse_domains(value["domains"], f"{source} domains") if "domains" in value else None,
        presets=parse_presets(value["presets"], f"{source} presets") if "presets" in value else None,
        methods=parse_methods(value["methods"], f"{source} methods") if "methods" in value else None,
        private_addresses=private,
    )


def spec_from_repo_config(config: Mapping[str, Any] | None, path: str = REPO_CONFIG) -> EgressSpec | None:
    """The repository's layer: the `[agent_internet]` table (or `agent_internet = "off"`) of its parsed
    config file; other tables belong to other features and are left alone."""
    if not config or REPO_TABLE not in config:
        return None
    return spec_from_mapping(config[REPO_TABLE], f"{path} [{REPO_TABLE}]")


def spec_from_request(value: Mapping[str, Any] | str | None) -> EgressSpec | None:
    return None if value is None else spec_from_mapping(value, "the job request's agent_internet")


# ---------------------------------------------------------------------------------------------- policy
@dataclass(frozen=True)
class EgressPolicy:
    """The agent phase's internet, resolved: `off`, or an allowlist of names with a method rule.

    For plain HTTP the proxy sees each request and applies `methods`; HTTPS passes as a CONNECT tunnel
    it does not open, so for HTTPS the rule is per host (and port) only."""
    mode: Mode = "off"
    domains: tuple[AllowedDomain, ...] = ()
    methods: MethodRule = MethodRule(READ_ONLY, READ_ONLY_METHODS)
    tls_ports: tuple[int, ...] = (HTTPS_PORT,)
    private_addresses: bool = False
    notes: tuple[str, ...] = ()

    @property
    def allowlist(self) -> bool:
        return self.mode == "allowlist"

    def allows_host(self, host: str) -> bool:
        return self.allowlist and any(domain.matches(host) for domain in self.domains)

    def permits(self, host: str, method: str, port: int | None) -> bool:
        """Whether the rules let this request through (a name may still be refused for leading to a
        private address, which only the proxy can tell)."""
        if not self.allows_host(host):
            return False
        return port in self.tls_ports if method == "CONNECT" else self.methods.permits(method)

    def why_blocked(self, host: str, method: str, port: int | None) -> str:
        """The rule a refused request broke, in words a user can act on."""
        if not self.allowlist:
            return "agent internet is off"
        if not self.allows_host(host):
            return f"{host} is not on the allowlist"
        if method == "CONNECT" and port not in self.tls_ports:
            return f"HTTPS to port {port} is not allowed (ports {', '.join(map(str, self.tls_ports))})"
        if method != "CONNECT" and not self.methods.permits(method):
            return f"{method} is not allowed (methods: {self.methods.label})"
        if not self.private_addresses:
            return f"{host} resolves to a private, loopback or link-local address"
        return "refused by the proxy"

    def describe(self) -> str:
        if not self.allowlist:
            return "off"
        names = ", ".join(domain.pattern for domain in self.domains)
        return f"allowlist ({self.methods.label}): {names}"


def resolve_policy(*layers: EgressSpec | None, backend: str = "docker",
                   lookup: Callable[[str], PresetHosts] = preset_hosts) -> EgressPolicy:
    """Later layers override earlier ones field by field (settings, then repository, then job request).

    Presets are resolved here, from this machine's package clients, so a changed pip or npm setting
    applies to the next job. `backend` is the resolved sandbox backend ("docker" or "local") of the job."""
    present = [layer for layer in layers if layer is not None]
    mode_layer = _last(present, "mode")
    mode: Mode = mode_layer.mode if mode_layer else "off"  # type: ignore[assignment]
    if mode == "off":
        return EgressPolicy()
    if backend == "local":
        raise EgressPolicyError(
            f"{mode_layer.source} asks for agent internet `allowlist`, but the local (bubblewrap) backend "
            "supports only `off`: it has no network to filter. Use the docker backend "
            "(ASSISTANT_SANDBOX_BACKEND=docker) or set agent internet to off.")
    if backend != "docker":
        raise ValueError(f"resolve the sandbox backend before the policy (docker or local, not {backend!r})")
    domains_layer, presets_layer = _last(present, "domains"), _last(present, "presets")
    methods_layer, private_layer = _last(present, "methods"), _last(present, "private_addresses")
    allowed = [AllowedDomain(pattern, domains_layer.source) for pattern in (domains_layer.domains if domains_layer else ())]
    tls_ports = [HTTPS_PORT]
    notes: list[str] = []
    for preset in presets_layer.presets if presets_layer else ():
        for part in PRESETS[preset]:
            found = lookup(part)
            notes += [f"preset {part}: {note}" for note in found.notes]
            if not found.hosts and part == preset:
                raise EgressPolicyError(f"{presets_layer.source}: preset {preset} found no hosts on this machine "
                                        f"({'; '.join(found.notes)}); configure the client or drop the preset")
            allowed += [AllowedDomain(parse_domain(host, f"preset {part}"), f"preset {part}") for host in found.hosts]
            tls_ports += [port for port in found.tls_ports if port not in tls_ports]
    allowed = _without_covered(allowed)
    if not allowed:
        raise EgressPolicyError(
            f"{mode_layer.source} asks for agent internet `allowlist` but no domain is allowed: name domains "
            "(ASSISTANT_AGENT_INTERNET_DOMAINS or `domains` in the table) or presets, or set it to off")
    return EgressPolicy(
        mode="allowlist",
        domains=tuple(allowed),
        methods=methods_layer.methods if methods_layer else MethodRule(READ_ONLY, READ_ONLY_METHODS),
        tls_ports=tuple(tls_ports),
        private_addresses=bool(private_layer.private_addresses) if private_layer else False,
        notes=tuple(notes),
    )


def _last(layers: list[EgressSpec], field: str) -> EgressSpec | None:
    return next((layer for layer in reversed(layers) if getattr(layer, field) is not None), None)


def _without_covered(domains: list[AllowedDomain]) -> list[AllowedDomain]:
    """Drop repeats and names a wildcard already covers (squid warns about overlapping entries)."""
    wildcards = [domain for domain in domains if domain.wildcard]
    kept: list[AllowedDomain] = []
    seen: set[str] = set()
    for domain in domains:
        if domain.pattern in seen:
            continue
        if any(other is not domain and other.pattern != domain.pattern and other.matches(domain.base)
               for other in wildcards):
            continue
        seen.add(domain.pattern)
        kept.append(domain)
    return kept
