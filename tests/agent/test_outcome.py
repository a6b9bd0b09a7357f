"""The kind of result from the log's evidence: fix, draft, findings, no result."""
from assistant.agent.evidence import LogRecord
from assistant.agent.outcome import DRAFT, FINDINGS, FIX, NO_RESULT, STOPPED, covers, decide_outcome, kind_rank

FILES = [["modified", "calc.py"]]
TEST = "python3 -m unittest -v 2>&1"


def log(*entries):
    """(command, exit code) pairs as the job's agent log, in order."""
    return [LogRecord(f"c{i:05d}", i, "agent", command, code, line_count=3) for i, (command, code) in enumerate(entries)]


def test_fix_when_every_test_command_passes_after_the_last_edit():
    outcome = decide_outcome(log((TEST, 1), ("apply_patch", 0), (TEST, 0)), changed_files=FILES)
    assert outcome.kind == FIX
    assert [(e.command, e.chunk_id, e.exit_code, e.after_last_edit) for e in outcome.evidence] == [(TEST, "c00002", 0, True)]
    assert outcome.last_edit == {"chunk_id": "c00001", "command": "apply_patch"}


def test_draft_when_the_last_run_after_the_edit_fails():
    outcome = decide_outcome(log((TEST, 1), ("apply_patch", 0), (TEST, 1)), changed_files=FILES)
    assert outcome.kind == DRAFT and "exited 1 after the last edit (chunk c00002)" in outcome.reason


def test_draft_when_tests_were_not_rerun_after_the_last_edit():
    outcome = decide_outcome(log((TEST, 1), ("apply_patch", 0), (TEST, 0), ("sed -i s/a/b/ calc.py", 0)),
                             changed_files=FILES)
    assert outcome.kind == DRAFT and "not run after the last edit (chunk c00003)" in outcome.reason
    assert outcome.evidence[0].after_last_edit is False


def test_draft_when_no_test_was_run_at_all():
    outcome = decide_outcome(log(("apply_patch", 0), ("cat calc.py", 0)), changed_files=FILES)
    assert outcome.kind == DRAFT and outcome.reason == "no test command was run"


def test_a_narrow_run_before_the_edit_is_covered_by_a_broader_one_after_it():
    narrow = "python -m pytest -x tests/test_calc.py::test_add"
    outcome = decide_outcome(log((narrow, 1), ("apply_patch", 0), ("python -m pytest -q", 0)), changed_files=FILES)
    assert outcome.kind == FIX
    other = decide_outcome(log((narrow, 1), ("apply_patch", 0), ("pytest tests/test_other.py", 0)), changed_files=FILES)
    assert other.kind == DRAFT and "was not re-run" in other.reason


def test_every_test_command_used_after_the_edit_must_pass():
    outcome = decide_outcome(log(("apply_patch", 0), ("pytest tests/a.py", 0), ("make check", 2)), changed_files=FILES)
    assert outcome.kind == DRAFT and "`make check` exited 2" in outcome.reason


def test_changed_tests_or_an_unfinished_agent_make_a_passing_diff_a_draft():
    records = log((TEST, 1), ("apply_patch", 0), (TEST, 0))
    changed = decide_outcome(records, changed_files=FILES, tests_changed=["test_calc.py"])
    assert changed.kind == DRAFT and "tests themselves were changed: test_calc.py" in changed.reason
    stopped = decide_outcome(records, changed_files=FILES, agent_finished=False)
    assert stopped.kind == DRAFT and stopped.reason == f"the tests pass, but {STOPPED}"


def test_no_diff_is_findings_only_with_a_located_problem_from_a_finished_agent():
    records = log((TEST, 1), ("grep -n add calc.py", 0))
    assert decide_outcome(records, changed_files=[], summary_located=True).kind == FINDINGS
    assert decide_outcome(records, changed_files=[]).kind == NO_RESULT
    stopped = decide_outcome(records, changed_files=[], summary_located=True, agent_finished=False)
    assert stopped.kind == NO_RESULT and stopped.reason == STOPPED


def test_setup_runs_are_no_evidence_for_the_agent():
    records = [LogRecord("s00000", 0, "setup", "pytest", 0)] + log(("apply_patch", 0))[0:1]
    records[1] = LogRecord("c00001", 1, "agent", "apply_patch", 0)
    assert decide_outcome(records, changed_files=FILES).reason == "no test command was run"


def test_ranking_order_and_coverage_rules():
    assert [kind_rank(k) for k in (FIX, DRAFT, FINDINGS, NO_RESULT, None)] == [0, 1, 2, 3, 4]
    assert covers("pytest", "pytest -x tests/a.py") and covers("pytest tests", "pytest tests/a.py::t")
    assert not covers("pytest tests/b.py", "pytest tests/a.py") and not covers("tox", "pytest")


def test_reruns_are_told_apart_by_what_they_run_not_by_what_surrounds_it():
    outcome = decide_outcome(log((f"echo attempt 1; {TEST}", 1), ("apply_patch", 0), (f"cd /workspace && {TEST}", 0)),
                             changed_files=FILES)
    assert outcome.kind == FIX and len(outcome.evidence) == 1
