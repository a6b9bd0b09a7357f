"""Blocked requests in words, and an allow table that really allows them."""

import tomllib

from assistant.egress import resolve_policy, spec_from_mapping, spec_from_repo_config
from assistant.egress.report import allow_table, blocked_lines, blocked_summary
from assistant.egress.squid import parse_access_log

LOG = (
    "1795480721.864 172.19.0.3 TCP_MISS/200 GET http://docs.example.org/a\n"
    "1795480721.865 172.19.0.3 TCP_DENIED/403 POST http://docs.example.org/form\n"
    "1795480721.908 172.19.0.3 TCP_DENIED/403 CONNECT api.example.net:443\n"
    "1795480721.910 172.19.0.3 TCP_DENIED/403 GET http://[::1]:8080/x\n"
    "1795480721.911 172.19.0.3 NONE_NONE/000 - error:transaction-end-before-headers\n"
    "1795480721.912 172.19.0.3 TCP_DENIED/403 CONNECT cdn.exa"
)


def policy():
    return resolve_policy(spec_from_mapping({"mode": "allowlist", "domains": ["docs.example.org"]}, "t"))


def test_the_log_becomes_typed_records_with_the_rule_each_broke():
    records = parse_access_log(LOG, policy())
    assert [(r.method, r.host, r.status, r.blocked) for r in records] == [
        ("GET", "docs.example.org", 200, False), ("POST", "docs.example.org", 403, True),
        ("CONNECT", "api.example.net", 403, True), ("GET", "::1", 403, True)]  # no probe, no torn last line
    assert records[1].reason == "POST is not allowed (methods: read-only)"
    assert records[2].reason == "api.example.net is not on the allowlist"
    assert records[0].time.year >= 2026 and records[0].time.tzinfo is not None


def test_summary_and_table_allow_exactly_what_was_blocked():
    blocked = [r for r in parse_access_log(LOG, policy()) if r.blocked]
    summary = blocked_summary(blocked, policy())
    assert summary.startswith("3 requests blocked: POST http://docs.example.org/form, CONNECT api.example.net:443, "
                              "GET http://[::1]:8080/x — allow them with")
    table = allow_table(blocked[:2], policy())
    widened = resolve_policy(spec_from_repo_config(tomllib.loads(table)))
    for record in blocked[:2]:
        assert widened.permits(record.host, record.method, 443)
    assert widened.methods.allowed == {"GET", "HEAD", "OPTIONS", "POST"}
    assert "and 3 more — allow them" in blocked_summary(blocked * 2, policy())
    assert blocked_summary([], policy()) == ""
    assert blocked_lines(blocked[:1]) == (
        f"{blocked[0].time:%Y-%m-%dT%H:%M:%S.%f}"[:-3] + "Z 403 POST http://docs.example.org/form — "
        "POST is not allowed (methods: read-only)\n")
