"""The reviewer's report as read from its answer, proof tests as patches, the proof rule, and the summary, which
states only verified findings as facts."""
from __future__ import annotations

import json
import subprocess

import pytest

from assistant.agent.reviewer import (ReportMissing, new_file_patch, normalized_test, parse_report,
                                      proof_path_problem, proof_status, render_summary)
from assistant.domain.review import Finding, Proof, ProofRun, ReviewResult
from tests.fixtures.repos import make_repo

REPORT = {"verdict": "Changes Requested", "summary": "One bug.", "findings": [
    {"title": "Off by one", "severity": "BLOCKER", "body": "The range stops short 【F:a.py†L3-L3】.",
     "path": "a.py", "start_line": 3, "proof_command": "python3 t.py", "proof_test_path": "t.py",
     "proof_test": "assert False"},
    {"title": "Naming", "severity": "nit", "body": "Call it n.", "extra": "ignored"}]}


def test_a_fenced_report_after_prose_is_read_leniently():
    report = parse_report("I looked at it.\n```json\n" + json.dumps(REPORT) + "\n```\nThanks.")
    assert report.verdict == "changes_requested" and report.summary == "One bug."
    first, second = report.findings
    assert (first.severity, first.proof_command, first.proof_test_path) == ("blocker", "python3 t.py", "t.py")
    assert first.location_citation() == "【F:a.py†L3-L3】"
    assert second.proof_command is None and second.location_citation() == ""


def test_a_bare_object_is_read_too():
    assert parse_report("Review: " + json.dumps({"verdict": "approve", "findings": []})).findings == []


@pytest.mark.parametrize("text, problem", [
    ("Looks good to me.", "no JSON object"),
    ("```json\n{\"verdict\": \"approve\",}\n```", "does not parse"),
    (json.dumps({"verdict": "approve", "findings": [{"title": "x", "severity": "fatal", "body": "y"}]}),
     "schema"),
    (json.dumps({"findings": []}), "schema"),
])
def test_an_answer_without_a_report_says_what_was_wrong(text, problem):
    with pytest.raises(ReportMissing, match=problem):
        parse_report(text)


@pytest.mark.parametrize("path", ["../x.py", "/etc/passwd", ".git/hooks/pre-commit", "a b.py", "tests/../../x", ""])
def test_proof_test_paths_stay_plain_and_inside_the_workspace(path):
    assert proof_path_problem(path) is not None


def test_a_proof_test_patch_applies_with_git(tmp_path):
    repo = make_repo(tmp_path / "r", {"a.py": "x = 1\n"})
    content = normalized_test("import a\n\nassert a.x == 2")
    patch = new_file_patch("tests/test_proof.py", content)
    subprocess.run(["git", "apply", "-"], input=patch, text=True, cwd=repo, check=True)
    assert (repo / "tests/test_proof.py").read_text() == "import a\n\nassert a.x == 2\n"


def run(side, code, timed_out=False):
    return ProofRun(side, "cmd", "abc123", code, timed_out, 4)


@pytest.mark.parametrize("head, base, status", [
    (1, 0, "confirmed"), (0, 0, "passes_on_head"), (0, 1, "passes_on_head"), (1, 1, "fails_on_base"),
    (2, None, "fails_on_base")])
def test_only_a_proof_that_fails_on_the_head_and_passes_on_the_base_confirms(head, base, status):
    assert proof_status(run("head", head), run("base", base)) == status


def finding(fid, severity, verified, proof=None):
    return Finding(fid, f"title {fid}", severity, f"body {fid}", proof=proof, verified=verified)


def test_the_summary_states_only_verified_findings_as_facts():
    confirmed = Proof("cmd", status="confirmed", head=run("head", 1), base=run("base", 0))
    passing = Proof("cmd2", status="passes_on_head", head=run("head", 0), base=run("base", 0))
    result = ReviewResult("changes_requested", "b" * 40, "h" * 40, "branch", model_verdict="approve",
                          findings=[finding("f1", "blocker", True, confirmed), finding("f2", "major", False),
                                    finding("f3", "minor", False, passing)])
    text = render_summary(result)
    assert text.startswith("**Review: changes requested**")
    assert "[f1] title f1** (verified: its proof `cmd` fails on the head 【abc123†L1-L4】" in text
    assert "[f2] title f2** (unverified: no proof was given)" in text
    assert "[f3] title f3** (unverified: its proof passes on the head" in text
    assert "not consistent" in text and "agrees" not in text
    assert text.index("### Blocker") < text.index("### Major") < text.index("### Minor")
