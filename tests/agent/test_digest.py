"""The plain digest of a job that ended without a summary, and the log excerpt the summary model reads."""
from assistant.agent.citations import check_citations
from assistant.agent.digest import log_excerpt, plain_digest
from assistant.agent.evidence import LogRecord

TEST = "python3 -m pytest -q"


def records():
    return [LogRecord("e00000", 0, "setup", "pip install -e .", 0, line_count=4, text="ok\n" * 4),
            LogRecord("a00001", 1, "agent", TEST, 1, line_count=30, text="".join(f"line {i}\n" for i in range(1, 31))),
            LogRecord("a00002", 2, "agent", "apply_patch", 0, line_count=2, text="Patch applied.\nM calc.py\n"),
            LogRecord("a00003", 3, "agent", TEST, 1, line_count=20, text="F\n" * 19 + "1 failed in 0.1s\n"),
            LogRecord("a00004", 4, "agent", "ls -la", 0, line_count=0)]


def valid_everywhere(text, recs):
    lines = {r.chunk_id: (r.line_count, "job") for r in recs}
    cites = check_citations(text, chunk_lookup=lines.get)
    return bool(cites) and all(c.valid for c in cites)


def test_a_budget_stop_says_what_ran_what_failed_and_what_next_with_valid_citations():
    recs = records()
    text = plain_digest(state="failed", reason="step budget exhausted (60 model turns; ASSISTANT_JOB_MAX_STEPS)",
                        records=recs, files=[["modified", "calc.py"]])
    assert text.splitlines()[0] == "The job failed: step budget exhausted (60 model turns; ASSISTANT_JOB_MAX_STEPS)."
    assert "- Setup ran 1 command without error." in text
    assert "The agent ran 4 commands and applied 1 patch; the last was `ls -la` (exit 0)" in text  # no output: no citation
    assert f"- The last test run, `{TEST}`, failed (exit 1, after the last edit) 【a00003†L9-L20】" in text
    assert "- Files changed (the diff is kept): `calc.py`." in text
    assert "Next: narrow the task, or raise the budget" in text
    assert valid_everywhere(text, recs)


def test_a_setup_failure_cites_the_setup_log():
    recs = [LogRecord("e00000", 0, "setup", "pip install -e .", 1, line_count=3, text="a\nb\nerror\n")]
    text = plain_digest(state="failed", reason="setup command failed", records=recs)
    assert "- Setup stopped at `pip install -e .` (exit 1) 【e00000†L1-L3】" in text
    assert "- The agent did not start." in text and "make the setup command `pip install -e .` work" in text
    assert valid_everywhere(text, recs)


def test_a_job_cancelled_in_the_queue_has_a_digest_without_citations():
    text = plain_digest(state="cancelled", reason="cancelled by the user before it started", records=[])
    assert text.startswith("The job was cancelled: cancelled by the user before it started.")
    assert "No command of the agent finished." in text and "【" not in text


def test_log_excerpt_numbers_lines_as_stored_and_keeps_the_newest_when_cut():
    recs = records()
    text = log_excerpt(recs)
    assert "chunk a00003 · agent · exit 1 · 20 lines · test run\n  $ python3 -m pytest -q" in text
    assert "       20 | 1 failed in 0.1s" in text and "chunk a00002 · agent · exit 0 · 2 lines · last edit" in text
    assert "       30 | line 30" in text and "line 18\n" not in text                    # tails only
    cut = log_excerpt(recs, limit=300)
    assert "earlier commands left out" in cut and "chunk a00004" in cut and "chunk e00000" not in cut


def test_a_question_nobody_answered_says_to_give_the_answer_not_to_read_the_log():
    from assistant.agent.asking import Question, Reply, unanswered_reason
    reason = unanswered_reason(Question("Keep the old name?", ("keep", "rename")),
                               Reply(answer=None, ended="timeout", waited_s=15.2, timeout_s=15))
    text = plain_digest(state="failed", reason=reason, records=[])
    assert text.startswith("The job failed: the agent asked \u201cKeep the old name?\u201d and waited 15 s for an "
                           "answer that did not come (ASSISTANT_ASK_TIMEOUT_S is 15 s)")
    assert text.endswith("Next: retry the job with the answer to its question in the task, or ask a follow-up that "
                         "answers it.")
    assert "read the log" not in text
