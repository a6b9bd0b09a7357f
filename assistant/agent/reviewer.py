"""The reviewer's side of a review job: the report it must end with, read from its final answer (or asked for once
more, grammar-constrained), proof tests as patches, and the review rendered as a checked summary.

Nothing here decides what is true: the report is only what the model says. The product runs the proofs and
checks the citations (assistant/jobs/review.py) before anything is marked verified.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..domain.review import PROOF_CONFIRMED, PROOF_FAILS_ON_BASE, PROOF_PASSES, SEVERITIES, VERDICTS, ReviewResult
from ..llm.jsonshape import schema_violations

MAX_FINDINGS = 12
MAX_TEST_BYTES = 20_000

REPORT_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": list(VERDICTS)},
        "summary": {"type": "string"},
        "findings": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "severity": {"type": "string", "enum": list(SEVERITIES)},
                "body": {"type": "string"},
                "path": {"type": "string"},
                "start_line": {"type": "integer"},
                "end_line": {"type": "integer"},
                "proof_command": {"type": "string"},
                "proof_test_path": {"type": "string"},
                "proof_test": {"type": "string"},
            },
            "required": ["title", "severity", "body"],
        }},
    },
    "required": ["verdict", "findings"],
}

_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.S)
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")


@dataclass
class ReportedFinding:
    title: str
    severity: str
    body: str
    path: str | None = None
    start_line: int | None = None
    end_line: int | None = None
    proof_command: str | None = None
    proof_test_path: str | None = None
    proof_test: str | None = None

    def location_citation(self) -> str:
        """The finding's location as a file citation (checked with the others), or ""."""
        if not self.path or not self.start_line:
            return ""
        end = self.end_line if self.end_line and self.end_line >= self.start_line else self.start_line
        return f"【F:{self.path.strip().removeprefix('./')}†L{self.start_line}-L{end}】"


@dataclass
class Report:
    verdict: str | None
    summary: str
    findings: list[ReportedFinding]


class ReportMissing(ValueError):
    """The reviewer's answer held no report in the expected shape; the message says what was wrong."""


def _candidates(text: str) -> list[str]:
    found = [m.group(1) for m in _FENCE.finditer(text or "")]
    start, end = (text or "").find("{"), (text or "").rfind("}")
    if start != -1 and end > start:
        found.append(text[start:end + 1])
    return found


def parse_report(text: str) -> Report:
    """The report in a final answer (a JSON object, fenced or bare). ReportMissing says why none was found."""
    problems = ["no JSON object in the answer"]
    for candidate in _candidates(text):
        try:
            value = json.loads(candidate)
        except ValueError as exc:
            problems = [f"the JSON does not parse ({exc})"]
            continue
        try:
            return report_from_json(value)
        except ReportMissing as exc:
            problems = [str(exc)]
    raise ReportMissing("; ".join(problems))


def report_from_json(value) -> Report:
    """A report from the model's JSON, leniently: severities and verdicts in any case, unknown keys ignored."""
    if isinstance(value, dict):
        for item in value.get("findings") or []:
            if isinstance(item, dict) and isinstance(item.get("severity"), str):
                item["severity"] = item["severity"].strip().lower()
        if isinstance(value.get("verdict"), str):
            value["verdict"] = value["verdict"].strip().lower().replace(" ", "_")
    problems = schema_violations(value, REPORT_SCHEMA)
    if problems:
        raise ReportMissing("the report does not fit its schema: " + "; ".join(problems[:5]))
    findings = []
    for item in value["findings"][:MAX_FINDINGS]:
        findings.append(ReportedFinding(
            title=item["title"].strip()[:200] or "(untitled)", severity=item["severity"], body=item["body"].strip(),
            path=item.get("path") or None, start_line=item.get("start_line"), end_line=item.get("end_line"),
            proof_command=(item.get("proof_command") or "").strip() or None,
            proof_test_path=(item.get("proof_test_path") or "").strip() or None,
            proof_test=item.get("proof_test") or None))
    return Report(value.get("verdict"), (value.get("summary") or "").strip(), findings)


def proof_path_problem(path: str) -> str | None:
    """Why a proof test may not be written at this workspace path, or None."""
    if len(path) > 200 or not _SAFE_PATH.match(path) or ".." in path.split("/") or path.startswith(".git"):
        return (f"the proof test path {path[:80]!r} is refused: give a relative path of letters, digits, _ . - and /, "
                "outside .git")
    return None


def new_file_patch(path: str, content: str) -> str:
    """A git-apply-able patch that adds one text file."""
    lines = content.splitlines()
    body = "".join(f"+{line}\n" for line in lines)
    return (f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n"
            f"@@ -0,0 +1,{len(lines)} @@\n{body}")


def normalized_test(content: str) -> str:
    """A proof test's text as written into the workspace (and into its patch): ends with one newline."""
    return content.rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------- rendering
_VERDICT_WORDS = {"approve": "approve", "changes_requested": "changes requested", "comment": "comment"}
_STATUS_WORDS = {
    PROOF_PASSES: "its proof passes on the head, so it does not show the problem",
    PROOF_FAILS_ON_BASE: "its proof fails on the base too (the problem predates the change, or the proof is broken)",
}


def render_summary(result: ReviewResult) -> str:
    """The review as the job's summary: verdict, then findings by severity. Only a verified finding is stated as
    a fact; every other one says it is unverified and why."""
    counts = {s: len(fs) for s, fs in result.by_severity().items() if fs}
    verified = sum(1 for f in result.findings if f.verified)
    head = f"**Review: {_VERDICT_WORDS[result.verdict]}**"
    if result.findings:
        head += (" — " + ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items())
                 + f"; {verified} verified by a proof the product ran")
    else:
        head += " — no findings"
    parts = [head]
    if result.model_verdict and result.model_verdict_consistent:
        parts.append(f"The reviewer's verdict agrees: {_VERDICT_WORDS.get(result.model_verdict, result.model_verdict)}.")
    elif result.model_verdict:
        parts.append("The reviewer's own verdict was not consistent with the checked findings and is not shown.")
    if result.flags:
        parts.append("Flags on the diff: " + "; ".join(f"{f['kind'].replace('_', ' ')} `{f['path']}`"
                                                      for f in result.flags[:10]))
    for run in result.tests:
        where = "before the change (base)" if run.side == "base" else "after the change (head)"
        parts.append(f"Tests {where}: `{run.command}` exit {run.exit_code} 【{run.chunk_id}†L1-L{max(run.lines, 1)}】")
    for severity, findings in result.by_severity().items():
        if not findings:
            continue
        parts.append(f"### {severity.capitalize()}")
        for f in findings:
            parts.append(_finding_lines(f))
    return "\n\n".join(parts)


def _finding_lines(f) -> str:
    return f"- **[{f.id}] {f.title}** ({finding_status(f)})\n  {f.body}"


def finding_status(f) -> str:
    """Whether the product verified a finding, and on what runs (their log citations); else why not."""
    proof = f.proof
    if f.verified and proof is not None:
        status = (f"verified: its proof `{proof.command}` fails on the head {proof.head.citation} "
                  f"and passes on the base {proof.base.citation}")
    elif proof is None:
        status = "unverified: no proof was given"
    elif proof.status in _STATUS_WORDS:
        runs = " ".join(r.citation for r in (proof.head, proof.base) if r is not None)
        status = f"unverified: {_STATUS_WORDS[proof.status]} {runs}".rstrip()
    else:
        status = f"unverified: the proof was not run ({proof.reason or 'no reason recorded'})"
    return status


def proof_status(head_run, base_run) -> str:
    """The proof rule: it verifies a finding only by failing on the head and passing on the base."""
    if head_run.failed and base_run.passed:
        return PROOF_CONFIRMED
    if not head_run.failed:
        return PROOF_PASSES
    return PROOF_FAILS_ON_BASE
