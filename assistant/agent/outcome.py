"""What kind of result a job produced, decided from its log and its diff, never from the model's words.

- fix: a diff, and every test command the agent relied on ran after its last edit and passed;
- draft: a diff, but the tests were not re-run after the last edit, or failed, or passed only after the
  tests themselves were changed, or the agent never finished;
- findings: no diff, but the agent's own summary locates the problem with checked citations;
- no result: nothing of the above.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from ..domain.outcome import DRAFT, FINDINGS, FIX, KINDS, NO_RESULT, kind_rank  # noqa: F401  (the kinds are shared vocabulary)
from .evidence import LogRecord, is_test_command, last_edit, test_key, verdict

STOPPED = "the agent stopped before it finished (the job's reason says why)"


@dataclass(frozen=True)
class TestEvidence:
    """The last run of one test command: what the kind was decided on."""
    command: str
    chunk_id: str
    exit_code: int | None
    passed: bool
    after_last_edit: bool
    note: str = ""


@dataclass
class KindDecision:
    """The kind of result and what it rests on: the part of a job's Outcome (assistant.domain) decided here."""
    kind: str
    reason: str
    evidence: list[TestEvidence] = field(default_factory=list)
    last_edit: dict | None = None          # {"chunk_id", "command"} of the last logged edit

    def as_dict(self) -> dict:
        """The Outcome keys this decision sets."""
        return {"kind": self.kind, "kind_reason": self.reason, "evidence": [asdict(e) for e in self.evidence],
                "last_edit": self.last_edit}


def _positionals(norm: str) -> list[str]:
    return [w for w in norm.split()[1:] if not w.startswith("-")]


def covers(later: str, earlier: str) -> bool:
    """Whether the later test command runs at least what the earlier one ran: the same runner, and its
    targets (files, directories, test ids) are prefixes of the earlier targets, or it names none (all).
    `pytest -q` covers `pytest -x tests/test_a.py::test_b`; `pytest tests/test_b.py` does not cover `tests/test_a.py`."""
    if later == earlier:
        return True
    later_words, earlier_words = later.split(), earlier.split()
    if not later_words or not earlier_words or later_words[0] != earlier_words[0]:
        return False
    targets = _positionals(later)
    if not targets:
        return True
    return all(any(e.startswith(t) for t in targets) for e in _positionals(earlier))


def _evidence(record: LogRecord, edit_order: int) -> TestEvidence:
    v = verdict(record)
    return TestEvidence(record.command, record.chunk_id, record.exit_code, v.passed, record.order > edit_order, v.note)


def last_test_runs(records: Sequence[LogRecord], named_tests: Sequence[str] = ()) -> dict[str, LogRecord]:
    """The agent's last run of each distinct test command (normalised), in order of first use."""
    latest: dict[str, LogRecord] = {}
    for record in records:
        if record.phase == "agent" and is_test_command(record.command, named_tests):
            latest[test_key(record.command)] = record
    return latest


def decide_outcome(records: Sequence[LogRecord], *, changed_files: Sequence, named_tests: Sequence[str] = (),
                   agent_finished: bool = True, summary_located: bool = False,
                   tests_changed: Sequence[str] = ()) -> KindDecision:
    """The kind of result, with the runs it rests on.

    ``changed_files`` is the diff's file list; ``summary_located`` says the agent's own final summary
    cites the problem with valid citations; ``tests_changed`` names test files the diff weakened or
    rewrote although the task did not ask for that (review flags).
    """
    edit = last_edit(records)
    edit_order = edit.order if edit else -1
    latest = last_test_runs(records, named_tests)
    after = {k: r for k, r in latest.items() if r.order > edit_order}
    stale = {k: r for k, r in latest.items() if r.order < edit_order and not any(covers(a, k) for a in after)}
    evidence = [_evidence(r, edit_order) for r in sorted({**stale, **after}.values(), key=lambda r: r.order)]
    edit_info = {"chunk_id": edit.chunk_id, "command": edit.command} if edit else None

    def outcome(kind: str, reason: str) -> KindDecision:
        return KindDecision(kind, reason, evidence, edit_info)

    if not changed_files:
        if summary_located and agent_finished:
            return outcome(FINDINGS, "no change; the summary locates the problem with checked citations")
        return outcome(NO_RESULT, STOPPED if not agent_finished else "no change, and no finding backed by a checked citation")
    if not latest:
        return outcome(DRAFT, "no test command was run")
    if not after:
        where = f" (chunk {edit.chunk_id})" if edit else ""
        return outcome(DRAFT, f"the tests were not run after the last edit{where}")
    failing = [e for e in evidence if e.after_last_edit and not e.passed]
    if failing:
        first = failing[0]
        status = first.note if first.note == "timed out" else (
            f"failed ({first.note})" if first.note else f"exited {first.exit_code}")
        return outcome(DRAFT, f"`{first.command}` {status} after the last edit (chunk {first.chunk_id})")
    if stale:
        first = next(e for e in evidence if not e.after_last_edit)
        return outcome(DRAFT, f"`{first.command}` was not re-run after the last edit (its last run is chunk {first.chunk_id})")
    if tests_changed:
        return outcome(DRAFT, "the tests pass only after the tests themselves were changed: " + ", ".join(tests_changed))
    if not agent_finished:
        return outcome(DRAFT, f"the tests pass, but {STOPPED}")
    passing = [e for e in evidence if e.after_last_edit]
    return outcome(FIX, "passed after the last edit: " + "; ".join(f"`{e.command}` (chunk {e.chunk_id})" for e in passing))
