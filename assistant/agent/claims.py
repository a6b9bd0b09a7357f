"""Claims in a summary checked against the log: a sentence that says tests, a build or a command passed
must cite a logged run that exited 0 after the job's last edit.

A claim that cites a failing or stale run, a run of something else, or nothing, is kept in the text and
marked "⚠ not supported by the log" with the reason, the way invalid citations are marked.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

from .citations import CITATION_RE
from .evidence import LogRecord, is_test_command, last_edit, verdict

UNSUPPORTED = "⚠ not supported by the log"

_TESTS = re.compile(r"\b(test_\w+|\w+_tests?|Test[A-Z]\w*|tests?|testing|test[- ]suites?|suites?|specs?|pytest|py\.test|unittest|tox|nox|jest|vitest|"
                    r"mocha|rspec|go test|cargo test|make (?:test|check)|checks?|regression)\b", re.I)
_BUILD = re.compile(r"\b(builds?|built|compil\w*|lint\w*|type[- ]?check\w*|mypy|ruff|flake8|pyright|tsc|"
                    r"installs?|installed|installation|setup)\b", re.I)
_COMMAND = re.compile(r"\b(commands?|scripts?|reproduc\w+|re-?runs?|ran|runs?)\b", re.I)
_EXIT_ZERO = re.compile(r"\bexit(?:s|ed)?\s+(?:with\s+)?(?:code\s+|status\s+)?0\b|\bexit code (?:of )?0\b", re.I)
_PASS = re.compile(r"\b(pass(?:es|ed|ing)?|succeed(?:s|ed)?|success(?:ful(?:ly)?)?|green|works?|worked|"
                   r"clean(?:ly)?|OK)\b|PASSMARK", re.I)
# Phrases that say "passed" with a negative word in them; they are read as passing before negations are looked for.
_POSITIVE_NEGATIONS = re.compile(r"\b(?:with(?:out)?\s+(?:any\s+)?|no\s+|zero\s+|0\s+)(?:errors?|failures?|failed|"
                                 r"problems?|issues?|regressions?|warnings?)\b|\bno longer fail\w*", re.I)
# Words that describe which test (the one that was failing) rather than how it ends: "the failing test now
# passes" claims a pass. They are taken out before negations are looked for.
_DESCRIBED_FAILURE = re.compile(r"\b(?:(?:previously|originally|formerly|initially|once)[- ])?failing\s+(?=(?:`[^`]*`\s+)?"
                                r"(?:tests?|test_\w+|specs?|cases?|checks?|assertions?|suites?|unit tests?|`))|"
                                r"\b(?:which|that|who)\s+(?:was|were|had been|used to be)\s+failing"
                                r"(?:\s+(?:before|earlier|previously|initially|at first))?\b|"
                                r"\b(?:which|that)\s+(?:failed|used to fail)(?:\s+(?:before|earlier|previously|initially|"
                                r"at first|before the (?:fix|change|edit)))?\b", re.I)
_NEGATION = re.compile(r"\b(not|no|never|none|cannot|can't|couldn't|didn't|don't|doesn't|won't|isn't|aren't|wasn't|"
                       r"weren't|haven't|hasn't|unable|fail\w*|broken|errors?|unverified|yet to|until|before|if|"
                       r"should|would|could|might|may|whether|make sure|to (?:check|verify|confirm|ensure|see))\b", re.I)
_CLAUSE_BREAK = re.compile(r"[;:]\s+|,\s+|\s+(?:and|but|while|whereas|although|though|so)\s+|\s+[–—-]\s+", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`*_\[(【\"'])")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


@dataclass
class Claim:
    sentence: str
    start: int                 # offsets of the sentence in the summary
    end: int
    topic: str                 # "tests" | "build" | "command"
    supported: bool = False
    reason: str = ""
    chunk_ids: list[str] = field(default_factory=list)   # the log citations it rests on

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- finding
def sentences(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each sentence: lines (bullets, paragraphs) split further at sentence ends."""
    offset = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        bullet = _BULLET.match(body)
        start = bullet.end() if bullet else len(body) - len(body.lstrip())
        for gap in _SENTENCE_END.finditer(body, start):
            if body[start:gap.start()].strip():
                yield offset + start, offset + gap.start()
            start = gap.end()
        if body[start:].strip():
            yield offset + start, offset + len(body.rstrip())
        offset += len(line)


def _topic(text: str) -> str | None:
    for name, pattern in (("tests", _TESTS), ("build", _BUILD), ("command", _COMMAND)):
        if pattern.search(text):
            return name
    return None


def _passing_clause(clause: str) -> bool:
    plain = _POSITIVE_NEGATIONS.sub(" PASSMARK ", _DESCRIBED_FAILURE.sub(" ", CITATION_RE.sub(" ", clause)))
    if _EXIT_ZERO.search(plain):
        return True
    return bool(_PASS.search(plain)) and not _NEGATION.search(plain)


def _clauses(sentence: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for brk in _CLAUSE_BREAK.finditer(sentence):
        spans.append((start, brk.start()))
        start = brk.end()
    spans.append((start, len(sentence)))
    return spans


def _chunk_citations(text: str) -> list[str]:
    return [m["chunk"] for m in CITATION_RE.finditer(text) if m["chunk"]]


def find_claims(summary: str) -> list[tuple[Claim, list[str]]]:
    """Sentences that claim a pass, with the log citations of the claiming clause (or else of the sentence)."""
    found = []
    for start, end in sentences(summary or ""):
        sentence = summary[start:end]
        cited: list[str] = []
        topic = None
        for c_start, c_end in _clauses(sentence):
            clause = sentence[c_start:c_end]
            if not _passing_clause(clause):
                continue
            clause_topic = "command" if _EXIT_ZERO.search(clause) and not _topic(clause) else _topic(clause)
            topic = topic or clause_topic or _topic(CITATION_RE.sub(" ", sentence))
            cited += _chunk_citations(clause)
        if topic is None:
            continue
        found.append((Claim(sentence.strip(), start, end, topic), cited or _chunk_citations(sentence)))
    return found


# ---------------------------------------------------------------------------------------------- checking
def _describe(record: LogRecord) -> str:
    command = " ".join(record.command.split())
    return f"`{command[:80]}{'…' if len(command) > 80 else ''}` (chunk {record.chunk_id})"


def _failure(record: LogRecord) -> str:
    v = verdict(record)
    return "timed out" if record.timed_out else (f"failed ({v.note})" if v.note else f"exited {record.exit_code}")


def _judge(claim: Claim, cited: Sequence[LogRecord], records: Sequence[LogRecord], edit_order: int,
           edit: LogRecord | None, named_tests: Sequence[str]) -> tuple[bool, str]:
    def relevant(r: LogRecord) -> bool:
        return claim.topic != "tests" or is_test_command(r.command, named_tests)

    good = [r for r in cited if verdict(r).passed and r.order > edit_order and relevant(r)]
    if good:
        newest = max(good, key=lambda r: r.order)
        if claim.topic == "tests":
            later = [r for r in records if r.order > newest.order and r.phase == "agent"
                     and is_test_command(r.command, named_tests) and not verdict(r).passed]
            if later:
                return False, f"a later test run failed: {_describe(later[-1])} {_failure(later[-1])}"
        return True, ""
    last = max(cited, key=lambda r: r.order)
    if not verdict(last).passed:
        return False, f"the cited run {_describe(last)} {_failure(last)}"
    if last.order < edit_order and edit is not None:
        return False, f"the cited run {_describe(last)} ran before the last edit (chunk {edit.chunk_id})"
    return False, f"the cited run {_describe(last)} is not a test run"


def _last_run_contradicts(claim: Claim, records: Sequence[LogRecord], named_tests: Sequence[str]) -> str:
    """", and the last test run failed: …" when the log contradicts an uncited test claim outright."""
    if claim.topic != "tests":
        return ""
    runs = [r for r in records if r.phase == "agent" and is_test_command(r.command, named_tests)]
    if not runs:
        return ", and no test ran in this job"
    if not verdict(runs[-1]).passed:
        return f", and the last test run failed: {_describe(runs[-1])} {_failure(runs[-1])}"
    return ""


def check_claims(summary: str, records: Sequence[LogRecord], *, named_tests: Sequence[str] = ()) -> list[Claim]:
    """Every pass claim of the summary, judged against the job's own log records."""
    by_id = {r.chunk_id: r for r in records}
    edit = last_edit(records)
    edit_order = edit.order if edit else -1
    claims = []
    for claim, cited_ids in find_claims(summary):
        claim.chunk_ids = cited_ids
        cited = [by_id[c] for c in cited_ids if c in by_id]
        if not cited_ids:
            claim.reason = "it cites no log output" + _last_run_contradicts(claim, records, named_tests)
        elif not cited:
            claim.reason = f"it cites log output this job did not log ({', '.join(cited_ids)})"
        else:
            claim.supported, claim.reason = _judge(claim, cited, records, edit_order, edit, named_tests)
        claims.append(claim)
    return claims


# ---------------------------------------------------------------------------------------------- showing
def mark_claims(summary: str, claims: Sequence[dict | Claim], render: Callable[[dict], str]) -> str:
    """The summary with render(claim) inserted after each unsupported claim's sentence."""
    marks = [c.as_dict() if isinstance(c, Claim) else c for c in claims]
    text = summary or ""
    for claim in sorted((c for c in marks if not c.get("supported")), key=lambda c: c["end"], reverse=True):
        end = claim["end"]
        if 0 <= end <= len(text):
            text = text[:end] + render(claim) + text[end:]
    return text


def plain_mark(claim: dict) -> str:
    return f" [{UNSUPPORTED}: {claim['reason']}]"


def markdown_reason(text: str) -> str:
    """A reason as Markdown: its `command` spans stay inline code, everything else is inert text."""
    parts = re.split(r"`([^`\n]+)`", re.sub(r"\s+", " ", text or ""))
    return "".join(f"`{part}`" if i % 2 else re.sub(r"([\\`*_\[\]<>#|~])", r"\\\1", part)
                   for i, part in enumerate(parts))


def markdown_mark(claim: dict) -> str:
    return f" **{UNSUPPORTED}** *({markdown_reason(str(claim['reason']))})*"
