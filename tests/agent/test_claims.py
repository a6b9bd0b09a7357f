"""Pass claims in summaries checked against the log, and how unsupported ones are marked."""
from assistant.agent.claims import UNSUPPORTED, check_claims, find_claims, mark_claims, markdown_mark, plain_mark
from assistant.agent.evidence import LogRecord

TEST = "python3 -m unittest -v 2>&1"
RECORDS = [LogRecord("aaaaaa", 0, "agent", TEST, 1, line_count=9), LogRecord("bbbbbb", 1, "agent", "apply_patch", 0),
           LogRecord("cccccc", 2, "agent", TEST, 0, line_count=5), LogRecord("dddddd", 3, "agent", "ls -la", 0)]


def judged(summary, records=RECORDS):
    return [(c.sentence, c.supported, c.reason) for c in check_claims(summary, records)]


def test_a_claim_citing_a_passing_run_after_the_last_edit_holds():
    summary = "The test failed before the fix 【aaaaaa†L1-L9】 and the whole suite passes after it 【cccccc†L1-L5】."
    assert judged(summary) == [(summary, True, "")]


def test_all_tests_pass_over_a_failing_run_is_not_supported():
    [(sentence, supported, reason)] = judged("All tests pass 【aaaaaa†L1-L9】.")
    assert not supported and reason == f"the cited run `{TEST}` (chunk aaaaaa) exited 1"


def test_claims_citing_nothing_another_command_or_a_stale_run():
    assert judged("All tests pass.")[0][2] == "it cites no log output"
    assert "is not a test run" in judged("Tests pass 【dddddd†L1】")[0][2]
    assert "did not log (eeeeee)" in judged("The tests pass 【eeeeee†L1】.")[0][2]
    stale = RECORDS + [LogRecord("ffffff", 4, "agent", "sed -i s/a/b/ calc.py", 0)]
    assert judged("All tests pass 【cccccc†L1-L5】.", stale)[0][2] == (
        f"the cited run `{TEST}` (chunk cccccc) ran before the last edit (chunk ffffff)")


def test_a_later_failing_test_run_contradicts_an_earlier_pass():
    records = RECORDS + [LogRecord("gggggg", 4, "agent", "pytest tests/test_other.py", 1)]
    [(_, supported, reason)] = judged("All tests pass 【cccccc†L1-L5】.", records)
    assert not supported and "a later test run failed: `pytest tests/test_other.py` (chunk gggggg) exited 1" == reason


def test_builds_and_commands_need_a_passing_run_but_not_a_test_run():
    assert judged("The build succeeds without errors 【dddddd†L1】.")[0][1] is True
    assert judged("The script exits with code 0 【aaaaaa†L1】.")[0][1] is False


def test_sentences_that_do_not_claim_a_pass_are_left_alone():
    summary = ("I could not run the tests. The test still fails 【cccccc†L1】. Run `pytest` to check that tests pass.\n"
               "- `add` subtracted instead of adding 【F:calc.py†L1-L2】.\n- Tests should pass once the fixture exists.")
    assert find_claims(summary) == []


def test_unsupported_claims_are_marked_after_their_sentence():
    summary = "- Fixed `add`.\n- All tests pass 【aaaaaa†L1-L9】.\n- Suite passes 【cccccc†L1-L5】."
    claims = check_claims(summary, RECORDS)
    plain = mark_claims(summary, claims, plain_mark)
    assert plain.splitlines()[1] == (f"- All tests pass 【aaaaaa†L1-L9】. [{UNSUPPORTED}: the cited run `{TEST}` "
                                     "(chunk aaaaaa) exited 1]")
    assert plain.splitlines()[2] == "- Suite passes 【cccccc†L1-L5】."
    markdown = mark_claims(summary, [c.as_dict() for c in claims], markdown_mark)
    assert f"**{UNSUPPORTED}** *(the cited run `python3 -m unittest -v 2>&1` (chunk aaaaaa) exited 1)*" in markdown


def test_a_pipe_that_hides_a_failure_does_not_support_a_claim():
    piped = LogRecord("eeeeee", 4, "agent", "python -m pytest -q 2>&1 | tail -3", 0, line_count=1,
                      text="1 failed, 4 passed in 0.12s\n")
    timed_out = LogRecord("ffffff", 5, "agent", "pytest -q", None, timed_out=True, line_count=1)
    assert judged("All tests pass 【eeeeee†L1】.", RECORDS + [piped])[0][2] == (
        "the cited run `python -m pytest -q 2>&1 | tail -3` (chunk eeeeee) failed (its runner's summary line says it "
        "failed; exit code 0 is the pipe's)")
    assert judged("Tests pass 【ffffff†L1】.", RECORDS + [timed_out])[0][2] == "the cited run `pytest -q` (chunk ffffff) timed out"
