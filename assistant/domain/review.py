"""A review's result as typed records: what `assistant review --json` prints and what a card renders.

The verdict and each finding's `verified` are the product's, decided from the proof runs it made itself on the
head and on the base (assistant/jobs/review.py); the reviewer model's own verdict is kept only to show whether
it agrees. A finding without a proof that ran and showed the problem is unverified, and is rendered as such.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

REVIEW_ARTIFACT = "review"          # a review job's result (ReviewResult as JSON)
PROOFS_ARTIFACT = "review_proofs"   # its proof tests, one git-apply-able patch

SEVERITIES = ("blocker", "major", "minor", "nit")
VERDICTS = ("approve", "changes_requested", "comment")

# Why a proof did or did not verify its finding.
PROOF_CONFIRMED = "confirmed"          # fails on the head, passes on the base: the change brought the problem
PROOF_PASSES = "passes_on_head"        # the proof does not show a problem on the head
PROOF_FAILS_ON_BASE = "fails_on_base"  # fails on both: the problem predates the change, or the proof is broken
PROOF_NOT_RUN = "not_run"              # no proof, or it could not be run (the reason says why)


@dataclass
class ProofRun:
    """One run of a proof, by the product, on one side of the change; its output is a log chunk."""
    side: str                 # head | base
    command: str
    chunk_id: str
    exit_code: int | None
    timed_out: bool = False
    lines: int = 0

    @property
    def citation(self) -> str:
        return f"【{self.chunk_id}†L1-L{max(self.lines, 1)}】"

    @property
    def failed(self) -> bool:
        return not self.timed_out and self.exit_code not in (0, None)

    @property
    def passed(self) -> bool:
        return not self.timed_out and self.exit_code == 0


@dataclass
class Proof:
    """What the reviewer offered as proof: a command, and maybe a small test file it wrote for it."""
    command: str
    test_path: str | None = None
    test_content: str | None = None
    status: str = PROOF_NOT_RUN
    reason: str = ""
    head: ProofRun | None = None
    base: ProofRun | None = None
    patch: str = ""           # the test file as a git-apply-able patch (empty without a test file)


@dataclass
class Finding:
    id: str                   # f1, f2, … in the report's order
    title: str
    severity: str
    body: str                 # the reviewer's explanation, its citations checked
    citations: list[dict] = field(default_factory=list)  # agent/citations.Citation.as_dict() plus "excerpt"
    proof: Proof | None = None
    verified: bool = False

    @property
    def serious(self) -> bool:
        return self.severity in ("blocker", "major")


@dataclass
class SuiteRun:
    """The repository's tests, run by the product on one side before the reviewer started."""
    side: str
    command: str
    chunk_id: str
    exit_code: int | None
    lines: int = 0


@dataclass
class ReviewResult:
    verdict: str
    base_commit: str
    head_commit: str
    mode: str                                 # branch | patch | job
    summary: str = ""                         # the reviewer's overall words
    model_verdict: str | None = None          # what the reviewer said, shown only when consistent
    model_verdict_consistent: bool = False
    findings: list[Finding] = field(default_factory=list)
    tests: list[SuiteRun] = field(default_factory=list)
    changed_files: list[list[str]] = field(default_factory=list)
    flags: list[dict] = field(default_factory=list)   # agent/review.py's flags on the change (ReviewFlag dicts)
    proof_patch: str = ""                     # every proof test, one patch

    def as_dict(self) -> dict:
        data = asdict(self)
        for finding, raw in zip(self.findings, data["findings"]):
            raw["serious"] = finding.serious
            if finding.proof is not None:
                for side in ("head", "base"):
                    run = getattr(finding.proof, side)
                    if run is not None:
                        raw["proof"][side]["citation"] = run.citation
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ReviewResult":
        def run(raw: dict | None) -> ProofRun | None:
            if not raw:
                return None
            return ProofRun(**{k: v for k, v in raw.items() if k != "citation"})

        def proof(raw: dict | None) -> Proof | None:
            if not raw:
                return None
            return Proof(**{**raw, "head": run(raw.get("head")), "base": run(raw.get("base"))})
        findings = [Finding(**{**{k: v for k, v in f.items() if k != "serious"}, "proof": proof(f.get("proof"))})
                    for f in data.get("findings") or []]
        tests = [SuiteRun(**t) for t in data.get("tests") or []]
        return cls(**{**data, "findings": findings, "tests": tests})

    def finding(self, finding_id: str) -> Finding:
        for finding in self.findings:
            if finding.id == finding_id:
                return finding
        known = ", ".join(f.id for f in self.findings) or "none"
        raise KeyError(f"the review has no finding {finding_id!r} (its findings: {known})")

    def by_severity(self) -> dict[str, list[Finding]]:
        """The findings grouped for a card, blockers first; verified ones first within a group."""
        return {s: sorted((f for f in self.findings if f.severity == s), key=lambda f: not f.verified)
                for s in SEVERITIES}


def decide_verdict(findings: list[Finding]) -> str:
    """Changes requested when a blocker or major finding is verified; approve when there is no blocker or major
    finding at all; otherwise a comment (serious findings the product could not confirm are no grounds to block)."""
    serious = [f for f in findings if f.serious]
    if any(f.verified for f in serious):
        return "changes_requested"
    return "comment" if serious else "approve"


SELF_REVIEW_ARTIFACT = "self_review"   # a coding job's review of its own diff (SelfReview as JSON)
SELF_REVIEW_DONE, SELF_REVIEW_INCOMPLETE = "done", "incomplete"


@dataclass
class SelfReview:
    """A coding job's second pass over its own diff, in its own sandbox (jobs/self_review.py): the review's result
    when it completed, or why it did not (then the job's own result stands as it was, with this note)."""
    status: str                               # done | incomplete
    reason: str = ""                          # why it is incomplete (a model error, its time ran out, …)
    seconds: float = 0.0
    result: ReviewResult | None = None

    @property
    def proved_problem(self) -> bool:
        """A blocker or major finding of the job's own diff verified by a proof the product ran."""
        return self.result is not None and self.result.verdict == "changes_requested"

    def verified_serious(self) -> list[Finding]:
        return [f for f in (self.result.findings if self.result else []) if f.verified and f.serious]

    def as_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "seconds": round(self.seconds, 1),
                "result": self.result.as_dict() if self.result is not None else None}

    @classmethod
    def from_dict(cls, data: dict) -> "SelfReview":
        result = data.get("result")
        return cls(status=data["status"], reason=data.get("reason") or "", seconds=data.get("seconds") or 0.0,
                   result=ReviewResult.from_dict(result) if result else None)
