"""A review job's card: the verdict, the findings by severity (each verified or not, with its checked excerpt and
its proof runs), the proof tests to download or apply, and the buttons that fix findings.

Pure functions of the stored ReviewResult (and the job's log chunks for the proof output), like cards.py: a
reopened thread renders the same card. Only a finding whose proof the product ran and saw fail on the head and
pass on the base is marked verified; everything else says it is the reviewer's claim, and why it was not verified.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..agent.citations import render_markdown
from ..domain.review import (PROOF_FAILS_ON_BASE, PROOF_NOT_RUN, PROOF_PASSES, SELF_REVIEW_DONE, SEVERITIES, Finding,
                             ProofRun, ReviewResult, SelfReview)
from .cards import _fence, _inline_code as _code, language_of, plain as _plain, unlinked as _unlinked

VERDICT_BADGES = {"approve": "✓ Approve", "changes_requested": "✗ Changes requested", "comment": "◇ Comment"}
VERDICT_WORDS = {"approve": "no blocker or major finding",
                 "changes_requested": "a blocker or major finding is verified by a proof the product ran",
                 "comment": "serious findings were raised, but none is verified: they are no grounds to block"}
SEVERITY_HEADINGS = {"blocker": "Blockers", "major": "Major", "minor": "Minor", "nit": "Nits"}
MAX_FIX_BUTTONS = 12      # "Fix this" buttons on one card (one action name each: the relay keys buttons by name)
PROOF_TAIL_LINES = 8      # lines of the head run's output quoted under a proof
EXCERPT_MAX_LINES = 15
UNVERIFIED_WHY = {None: "no proof was given", PROOF_PASSES: "its proof passes on the head",
                  PROOF_FAILS_ON_BASE: "its proof fails on the base too (the problem predates the change, or the "
                                       "proof is broken)"}

Links = Callable[[str, str, int, int], str]   # (kind, target, start, end) -> URL, as cards.link_citations takes
ChunkText = Callable[[str], "str | None"]     # chunk id -> its stored output


@dataclass(frozen=True)
class ButtonSpec:
    """A card button as data (the app makes the Chainlit action): its callback name, payload and label."""
    name: str
    payload: dict
    label: str
    icon: str = ""
    tooltip: str = ""


def verified_mark(finding: Finding) -> str:
    """The mark a finding carries everywhere: a verified one is a fact the product checked, the rest are claims."""
    if finding.verified:
        return "✔ **verified**"
    return f"⚠ *unverified — {_plain(unverified_reason(finding))}*"


def unverified_reason(finding: Finding) -> str:
    proof = finding.proof
    if proof is None:
        return UNVERIFIED_WHY[None]
    if proof.status == PROOF_NOT_RUN:
        return f"its proof was not run ({proof.reason or 'no reason recorded'})"
    return UNVERIFIED_WHY.get(proof.status, proof.status.replace("_", " "))


def _run_line(job_id: str, run: ProofRun | None, side: str, links: Links) -> str:
    if run is None:
        return f"{side}: not run"
    if run.timed_out:
        outcome = "timed out"
    else:
        outcome = f"exit {run.exit_code}" + (" ✖ fails" if run.failed else " ✔ passes" if run.passed else "")
    url = links("chunk", run.chunk_id, 1, max(run.lines, 1))
    return f"{side}: {outcome} · [log {run.chunk_id} #L1-{max(run.lines, 1)}]({url})"


def _tail(text: str | None, lines: int = PROOF_TAIL_LINES) -> str:
    if not text:
        return ""
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join(line[:200] for line in kept)


def _proof_lines(job_id: str, finding: Finding, links: Links, chunk_text: ChunkText) -> list[str]:
    proof = finding.proof
    if proof is None:
        return ["*No proof: the reviewer gave no command that shows it.*"]
    lines = [f"Proof: {_code(proof.command)}"
             + (f" with its test `{_plain(proof.test_path)}`" if proof.test_path else "")]
    if proof.status == PROOF_NOT_RUN:
        lines.append(f"Not run: {_plain(proof.reason or 'no reason recorded')}.")
        return lines
    lines.append(" · ".join((_run_line(job_id, proof.head, "head", links), _run_line(job_id, proof.base, "base", links))))
    if proof.head is not None:
        tail = _tail(chunk_text(proof.head.chunk_id))
        if tail:
            lines.append(f"Output on the head (last lines of log {proof.head.chunk_id}):\n\n" + _fence(tail, "text"))
    return lines


def _excerpts(finding: Finding, links: Links) -> list[str]:
    """Each checked file citation of the finding with its lines from the head."""
    out = []
    for c in finding.citations:
        if c.get("kind") != "file":
            continue
        where = f"{c['target']} #L{c['start']}" + (f"-{c['end']}" if c["end"] != c["start"] else "")
        if c.get("valid") and c.get("excerpt") is not None:
            excerpt = c["excerpt"].splitlines()
            shown = "\n".join(excerpt[:EXCERPT_MAX_LINES]) + ("\n…" if len(excerpt) > EXCERPT_MAX_LINES else "")
            url = links("file", f"F:{c['target']}", c["start"], c["end"])
            out.append(f"[{_plain(where)}]({url}) *(checked against the head)*\n\n"
                       + _fence(shown, language_of(c["target"])))
    return out  # an invalid one is struck through where the body cites it, said not to be checked


def finding_section(job_id: str, finding: Finding, links: Links, chunk_text: ChunkText,
                    downloads: bool = True) -> str:
    """One finding: its mark and title, then (a verified one) its explanation, or (an unverified one) the
    reviewer's claim said as such; its excerpts and its proof."""
    head = f"**{finding.id} · {_plain(finding.title)}** — {verified_mark(finding)}"
    body = render_markdown(_unlinked(finding.body), finding.citations, _citation_link(links)).replace(
        "*(unverified: ", "*(citation not checked: ")
    if finding.verified:
        text = body
    else:
        text = "> *The reviewer's claim, not checked by the product:* " + " ".join(body.split())
    parts = [head, text, *_excerpts(finding, links), *_proof_lines(job_id, finding, links, chunk_text)]
    if downloads and finding.proof is not None and finding.proof.patch:
        parts.append(f"[Download this proof test](/jobs/{job_id}/proofs?finding={finding.id})")
    return "\n\n".join(parts)


def _citation_link(links: Links):
    def link(c: dict) -> str:
        target = f"F:{c['target']}" if c["kind"] == "file" else c["target"]
        return links(c["kind"], target, c["start"], c["end"])
    return link


def verdict_section(result: ReviewResult, describe: str = "") -> str:
    """The headline: the verdict, what it rests on, and the counts."""
    badge = VERDICT_BADGES.get(result.verdict, _plain(result.verdict))
    verified = sum(1 for f in result.findings if f.verified)
    counts = ", ".join(f"{len(fs)} {s}{'s' if len(fs) != 1 else ''}" for s, fs in result.by_severity().items() if fs)
    lines = [f"## Verdict: {badge}",
             f"*{VERDICT_WORDS.get(result.verdict, '')}*",
             (f"**{len(result.findings)} finding{'s' if len(result.findings) != 1 else ''}** ({counts}) · "
              f"**{verified} verified** by a proof the product ran on the head and the base") if result.findings
             else "**No findings.**"]
    where = f"{_plain(describe)} · " if describe else ""
    lines.append(f"*{where}base `{result.base_commit[:12]}` → head `{result.head_commit[:12]}`*")
    if result.model_verdict and result.model_verdict_consistent:
        lines.append("The reviewer's own verdict agrees.")
    elif result.model_verdict:
        lines.append(f"*The reviewer said {_plain(result.model_verdict.replace('_', ' '))}; the verdict above is the "
                     "product's, from the checked findings.*")
    return "\n\n".join(lines)


def findings_index(result: ReviewResult) -> str:
    """Every finding in one line each, in the card's order, its mark first: what is verified shows at a glance."""
    lines = []
    for f in _fixable(result):
        title = _plain(f.title if len(f.title) <= 80 else f.title[:79] + "…")
        if f.verified:
            lines.append(f"- ✔ **{f.id} · {f.severity} · {title} — verified**")
        else:
            lines.append(f"- ⚠ {f.id} · {f.severity} · {title} — *unverified ({_plain(unverified_reason(f))})*")
    return "\n".join(lines)


def tests_line(result: ReviewResult, links: Links) -> str:
    if not result.tests:
        return "*The repository's tests were not run (no test command was found).*"
    runs = []
    for run in result.tests:
        mark = "✔" if run.exit_code == 0 else "✖"
        url = links("chunk", run.chunk_id, 1, max(run.lines, 1))
        runs.append(f"{mark} {run.side}: exit {run.exit_code} · [log]({url})")
    return f"Tests {_code(result.tests[0].command)}: " + " · ".join(runs)


def render_review(job_id: str, result: ReviewResult, links: Links, chunk_text: ChunkText,
                  describe: str = "") -> str:
    """The review part of a finished review job's card (Markdown)."""
    out = [verdict_section(result, describe)]
    if result.findings:
        out.append(findings_index(result))
    out.append(tests_line(result, links))
    if result.flags:
        out.append("Flags on the change: " + "; ".join(
            f"{_plain(f.get('kind', '').replace('_', ' '))} `{_plain(f.get('path') or '')}`" for f in result.flags[:10]))
    groups = result.by_severity()
    for severity in SEVERITIES:
        findings = groups[severity]
        if not findings:
            continue
        verified = sum(1 for f in findings if f.verified)
        out.append(f"### {SEVERITY_HEADINGS[severity]} ({len(findings)}, {verified} verified)")
        out += [finding_section(job_id, f, links, chunk_text) for f in findings]
    if result.summary:
        out.append("*The reviewer's note, in its own words (only the findings marked verified are checked facts):* "
                   + " ".join(render_markdown(_unlinked(result.summary), [], _citation_link(links)).split()))
    if result.proof_patch:
        count = sum(1 for f in result.findings if f.proof is not None and f.proof.patch
                    and f.proof.status != PROOF_NOT_RUN)
        out.append(f"**Proof tests** ({count}): [Download them as one patch](/jobs/{job_id}/proofs) or "
                   "**Apply proof tests** below to put them in your working copy.")
    if _fixable(result):
        out.append("**Fix this** starts a follow-up job for one finding, **Fix all blockers** one job for every "
                   "blocker; each starts from the change and its proof tests, and shows its own card.")
    return "\n\n".join(out)


def render_self_review(job_id: str, review: SelfReview, links: Links, chunk_text: ChunkText) -> str:
    """A coding job's self-review on its card: the verdict on the job's own change, the findings index (each
    verified or not, with its severity) and each finding's section; or a note that the self-review did not complete
    (then the result above is the job's own, unreviewed)."""
    if review.status != SELF_REVIEW_DONE or review.result is None:
        return ("#### Self-review: did not complete\n\n"
                f"⚠ *{_plain(review.reason or 'no reason recorded')}* — the result above is the job's own, unreviewed.")
    result = review.result
    badge = VERDICT_BADGES.get(result.verdict, _plain(result.verdict))
    verified = sum(1 for f in result.findings if f.verified)
    out = [f"#### Self-review of this change: {badge}",
           f"*{VERDICT_WORDS.get(result.verdict, '')}* · "
           + (f"{len(result.findings)} finding{'s' if len(result.findings) != 1 else ''}, {verified} verified by a "
              "proof the product ran on the change and on the start commit" if result.findings else "no findings")
           + f" · {review.seconds:.0f} s"]
    if result.findings:
        out.append(findings_index(result))
    out.append(tests_line(result, links))
    for severity in SEVERITIES:
        out += [finding_section(job_id, f, links, chunk_text, downloads=False) for f in result.by_severity()[severity]]
    return "\n\n".join(out)


def _fixable(result: ReviewResult) -> list[Finding]:
    """The findings a card offers to fix, in the card's order (by severity, verified first)."""
    return [f for severity in SEVERITIES for f in result.by_severity()[severity]]


def fix_button_name(i: int) -> str:
    return f"fix_finding_{i}"


FIX_BUTTON_NAMES = tuple(fix_button_name(i) for i in range(MAX_FIX_BUTTONS))


def review_buttons(job_id: str, result: ReviewResult, can_apply: bool) -> list[ButtonSpec]:
    """The card's review buttons: Fix all blockers (when there are any), Fix this per finding (up to
    MAX_FIX_BUTTONS, serious and verified first), Apply proof tests (a local working copy and proof tests)."""
    buttons = []
    blockers = result.by_severity()["blocker"]
    if blockers:
        buttons.append(ButtonSpec("fix_blockers", {"job_id": job_id}, f"Fix all blockers ({len(blockers)})",
                                  "wrench", "One follow-up job that fixes every blocker finding"))
    for i, finding in enumerate(_fixable(result)[:MAX_FIX_BUTTONS]):
        mark = "verified" if finding.verified else "unverified"
        buttons.append(ButtonSpec(fix_button_name(i), {"job_id": job_id, "finding": finding.id},
                                  f"Fix this: {finding.id} ({mark} {finding.severity})", "hammer",
                                  f"A follow-up job that fixes {finding.id}: {finding.title[:80]}"))
    if can_apply and result.proof_patch:
        buttons.append(ButtonSpec("apply_proofs", {"job_id": job_id}, "Apply proof tests", "download",
                                  "Add the proof tests to your working copy (git apply)"))
    return buttons


def proof_patch_of(result: ReviewResult, finding_id: str | None = None) -> str:
    """All proof tests as one patch, or one finding's (KeyError names the findings when it has none)."""
    if finding_id is None:
        return result.proof_patch
    finding = result.finding(finding_id)
    return finding.proof.patch if finding.proof is not None else ""
