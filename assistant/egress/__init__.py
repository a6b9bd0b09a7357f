"""Agent-phase internet by allowlist: the policy (settings, repository, job request) and a filtering
proxy per job (squid in its own container) as the only way out of the job's internal network.

The policy part is data only and imported eagerly (the settings validate with it); the Docker part is
loaded on first use, so reading the settings does not import the sandbox layer."""

from .policy import (
    AllowedDomain, EgressPolicy, EgressPolicyError, EgressSpec, MethodRule, resolve_policy, spec_from_mapping,
    spec_from_repo_config, spec_from_request, spec_from_settings,
)
from .presets import PRESETS

_LAZY = {
    "EgressGateway": "gateway", "EgressHandle": "gateway", "EgressCheck": "gateway", "EgressError": "gateway",
    "sweep_orphan_egress": "gateway", "ensure_proxy_image": "image", "proxy_image_status": "image",
    "EGRESS_IMAGE": "image", "ProxyRequest": "squid",
}

__all__ = [
    "AllowedDomain", "EgressPolicy", "EgressPolicyError", "EgressSpec", "MethodRule", "PRESETS", "resolve_policy",
    "spec_from_mapping", "spec_from_repo_config", "spec_from_request", "spec_from_settings", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
