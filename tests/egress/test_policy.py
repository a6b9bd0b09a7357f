"""The agent-internet policy: values checked with reasons, layers resolved in order, presets from the
machine's own package clients, the bubblewrap backend refused for anything but off."""

import functools
import tomllib

import pytest

from assistant.config import SettingsError, load_settings
from assistant.egress import (
    EgressPolicyError, resolve_policy, spec_from_mapping, spec_from_repo_config, spec_from_request, spec_from_settings,
)
from assistant.egress.policy import AllowedDomain, parse_domain, parse_methods, parse_presets
from assistant.egress.presets import PRESET_TOOLCHAIN, preset_hosts, toolchain_client_hosts


@pytest.mark.parametrize("given,expected", [
    ("Docs.Example.ORG.", "docs.example.org"),
    ("*.example.org", "*.example.org"),
    ("  mirror-1.example.org ", "mirror-1.example.org"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("webserver", "webserver"),
])
def test_domains_are_normalised(given, expected):
    assert parse_domain(given, "test") == expected


@pytest.mark.parametrize("given,needle", [
    ("", "empty"),
    ("https://example.org", "name the host only"),
    ("example.org:8443", "name the host only"),
    ("example.org/simple", "name the host only"),
    ("*.org", "whole top-level domain"),
    ("a.*.example.org", "may only open the name"),
    ("10.1.2.3", "addresses are not accepted"),
    ("-bad.example.org", "letters, digits and hyphens"),
    ("a..example.org", "not a valid host name"),
])
def test_bad_domains_say_why(given, needle):
    with pytest.raises(EgressPolicyError, match=needle) as err:
        parse_domain(given, "ASSISTANT_AGENT_INTERNET_DOMAINS")
    assert str(err.value).startswith("ASSISTANT_AGENT_INTERNET_DOMAINS: ")


def test_a_wildcard_matches_the_name_and_names_under_it_only():
    rule = AllowedDomain("*.example.org", "test")
    assert rule.matches("example.org") and rule.matches("a.b.example.org") and rule.matches("A.Example.Org.")
    assert not rule.matches("badexample.org") and not rule.matches("example.org.evil.test")
    exact = AllowedDomain("example.org", "test")
    assert exact.matches("example.org") and not exact.matches("www.example.org")


def test_methods():
    assert parse_methods("read-only", "t").allowed == {"GET", "HEAD", "OPTIONS"}
    assert parse_methods("ALL", "t").allowed is None
    assert parse_methods("get, post", "t").allowed == {"GET", "POST"}
    assert parse_methods(["PUT"], "t").label == "PUT"
    for bad, needle in [("CONNECT", "how HTTPS passes"), ("G3T", "not an HTTP method"), ("", "no methods")]:
        with pytest.raises(EgressPolicyError, match=needle):
            parse_methods(bad, "t")


def test_unknown_preset_lists_the_known_ones():
    assert parse_presets("Python-Packages, npm-packages", "t") == ("python-packages", "npm-packages")
    with pytest.raises(EgressPolicyError, match="unknown preset 'pip'.*package-registries"):
        parse_presets("pip", "t")


def test_settings_validate_at_load_and_name_the_variable(tmp_path):
    base = {"ASSISTANT_CONFIG": str(tmp_path / "none.toml")}
    for var, value, needle in [
        ("ASSISTANT_AGENT_INTERNET", "some", "'off' or 'allowlist'"),
        ("ASSISTANT_AGENT_INTERNET_DOMAINS", "https://example.org", "name the host only"),
        ("ASSISTANT_AGENT_INTERNET_PRESETS", "everything", "unknown preset"),
        ("ASSISTANT_AGENT_INTERNET_METHODS", "CONNECT", "how HTTPS passes"),
    ]:
        with pytest.raises(SettingsError) as err:
            load_settings({**base, var: value})
        assert var in str(err.value) and needle in str(err.value)
    settings = load_settings({**base, "ASSISTANT_AGENT_INTERNET": "allowlist",
                              "ASSISTANT_AGENT_INTERNET_DOMAINS": "docs.example.org,*.example.net",
                              "ASSISTANT_AGENT_INTERNET_METHODS": "all"})
    policy = resolve_policy(spec_from_settings(settings))
    assert [d.pattern for d in policy.domains] == ["docs.example.org", "*.example.net"]
    assert policy.methods.allowed is None and not policy.private_addresses


def test_off_is_the_default(tmp_path):
    settings = load_settings({"ASSISTANT_CONFIG": str(tmp_path / "none.toml")})
    assert resolve_policy(spec_from_settings(settings)).mode == "off"
    assert resolve_policy().describe() == "off"


def test_repository_table_is_read_from_toml_and_other_tables_are_left_alone():
    config = tomllib.loads(
        '[setup]\ncommands = ["make"]\n\n'
        '[agent_internet]\nmode = "allowlist"\ndomains = ["docs.example.org"]\nmethods = ["GET", "POST"]\n'
    )
    spec = spec_from_repo_config(config)
    assert spec.source == ".assistant/config.toml [agent_internet]"
    assert spec.domains == ("docs.example.org",) and spec.methods.allowed == {"GET", "POST"}
    assert spec_from_repo_config({"setup": {}}) is None and spec_from_repo_config(None) is None
    assert spec_from_repo_config(tomllib.loads('agent_internet = "off"\n')).mode == "off"


@pytest.mark.parametrize("table,needle", [
    ({"mode": "allowlist", "domain": ["x.org"]}, "unknown key 'domain'"),
    ({"mode": "on"}, "use off or allowlist"),
    ({"domains": "docs.example.org, https://x"}, "name the host only"),
    ({"domains": [1, 2]}, "expected a list of strings"),
    ({"private_addresses": "yes"}, "true or false"),
    (["allowlist"], "expected off, allowlist or a table"),
])
def test_bad_repository_tables_name_the_file(table, needle):
    with pytest.raises(EgressPolicyError, match=needle) as err:
        spec_from_repo_config({"agent_internet": table})
    assert ".assistant/config.toml [agent_internet]" in str(err.value)


def test_later_layers_override_field_by_field():
    settings = spec_from_mapping({"mode": "allowlist", "domains": ["a.example.org"], "methods": "all"}, "the settings")
    repo = spec_from_repo_config({"agent_internet": {"domains": ["b.example.org"]}})
    policy = resolve_policy(settings, repo, None)
    assert [(d.pattern, d.origin) for d in policy.domains] == [("b.example.org", repo.source)]
    assert policy.methods.allowed is None
    request = spec_from_request({"methods": "read-only"})
    assert resolve_policy(settings, repo, request).methods.label == "read-only"
    assert resolve_policy(settings, repo, spec_from_request("off")).mode == "off"


def test_allowlist_without_domains_is_refused():
    with pytest.raises(EgressPolicyError, match="no domain is allowed"):
        resolve_policy(spec_from_mapping("allowlist", "the job request"))


def test_bubblewrap_backend_supports_only_off():
    allowlist = spec_from_mapping({"mode": "allowlist", "domains": ["docs.example.org"]}, "the job request")
    with pytest.raises(EgressPolicyError) as err:
        resolve_policy(allowlist, backend="local")
    message = str(err.value)
    assert "the job request" in message and "bubblewrap" in message and "only `off`" in message
    assert resolve_policy(spec_from_mapping("off", "the job request"), backend="local").mode == "off"


def test_wildcards_absorb_the_names_they_cover():
    policy = resolve_policy(spec_from_mapping(
        {"mode": "allowlist", "domains": ["docs.example.org", "*.example.org", "*.a.example.org", "example.net"]},
        "t"))
    assert [d.pattern for d in policy.domains] == ["*.example.org", "example.net"]


def test_presets_take_hosts_from_the_package_clients(monkeypatch, tmp_path):
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example.invalid:8443/simple")
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text("deb http://debian.example.invalid/debian bookworm main\n")
    def lookup(preset):
        """As on a machine without npm and without the go, ruby and php clients or their toolchain images."""
        if preset in PRESET_TOOLCHAIN:
            return toolchain_client_hosts(preset, run=lambda argv: None)
        return preset_hosts(preset, apt_dir=apt, npm="")
    policy = resolve_policy(spec_from_mapping({"mode": "allowlist", "presets": ["package-registries"]}, "t"),
                            lookup=lookup)
    assert [(d.pattern, d.origin) for d in policy.domains] == [
        ("mirror.example.invalid", "preset python-packages"), ("debian.example.invalid", "preset debian-packages")]
    assert policy.tls_ports == (443, 8443)
    assert any("npm is not installed" in note for note in policy.notes)
    with pytest.raises(EgressPolicyError, match="preset npm-packages found no hosts.*npm is not installed"):
        resolve_policy(spec_from_mapping({"mode": "allowlist", "presets": ["npm-packages"]}, "t"), lookup=lookup)


def test_why_blocked_names_the_rule():
    policy = resolve_policy(spec_from_mapping({"mode": "allowlist", "domains": ["docs.example.org"]}, "t"))
    assert policy.why_blocked("other.example.org", "GET", 80) == "other.example.org is not on the allowlist"
    assert policy.why_blocked("docs.example.org", "POST", 80) == "POST is not allowed (methods: read-only)"
    assert policy.why_blocked("docs.example.org", "CONNECT", 22).startswith("HTTPS to port 22 is not allowed")
    assert "private" in policy.why_blocked("docs.example.org", "GET", 80)
    assert resolve_policy().why_blocked("docs.example.org", "GET", 80) == "agent internet is off"
