"""A review's typed result: the product's verdict rule, and the JSON the CLI prints and a card reads back."""
from __future__ import annotations

import json

import pytest

from assistant.domain.review import Finding, Proof, ProofRun, ReviewResult, decide_verdict


def run(side, code, timed_out=False):
    return ProofRun(side, "cmd", "abc123", code, timed_out, 4)


def finding(fid, severity, verified, proof=None):
    return Finding(fid, f"title {fid}", severity, f"body {fid}", proof=proof, verified=verified)


def test_the_verdict_is_the_products():
    assert decide_verdict([]) == "approve"
    assert decide_verdict([finding("f1", "minor", False), finding("f2", "nit", True)]) == "approve"
    assert decide_verdict([finding("f1", "blocker", False)]) == "comment"
    assert decide_verdict([finding("f1", "major", True), finding("f2", "nit", False)]) == "changes_requested"


def test_a_result_survives_its_json():
    confirmed = Proof("cmd", "t.py", "x\n", status="confirmed", head=run("head", 1), base=run("base", 0), patch="p")
    result = ReviewResult("changes_requested", "b", "h", "patch", findings=[finding("f1", "blocker", True, confirmed)])
    data = json.loads(json.dumps(result.as_dict()))
    assert data["findings"][0]["proof"]["head"]["citation"] == "【abc123†L1-L4】" and data["findings"][0]["serious"]
    assert ReviewResult.from_dict(data) == result
    assert ReviewResult.from_dict(data).finding("f1").verified
    with pytest.raises(KeyError, match="no finding 'f2'"):
        result.finding("f2")
