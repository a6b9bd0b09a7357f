"""Trustworthy results on whole jobs (real containers, the scripted model over HTTP): a summary for every job,
claims checked against the log, flags on the diff, the loop guard, best-of-N by kind, usage."""
from __future__ import annotations

import itertools
import json
import re
import threading

import pytest

from assistant.agent.claims import UNSUPPORTED
from assistant.jobs.manager import JobRequest
from assistant.testing.scripted_model import Reply, by_turn, chunk_ids
from assistant.web.cards import render_job_card
from tests.fixtures.repos import FIX_PATCH, make_calc_repo

pytestmark = pytest.mark.docker
AGENT = "You are a careful software engineer"
SUMMARY_ROLE = "You write the summary of a coding job"
TEST_CMD = "python3 -m unittest -v 2>&1"
BAD_PATCH = FIX_PATCH.replace("a + b", "a * b")            # still wrong: 2 * 3 != 5
TEST_EDIT = """*** Begin Patch
*** Update File: test_calc.py
@@ class CalcTest(unittest.TestCase):
     def test_add(self):
-        self.assertEqual(add(2, 3), 5)
+        self.assertEqual(add(2, 3), -1)
*** End Patch"""


def run_job(assistant, repo, task="Fix the failing test", **kw):
    job = assistant.jobs.submit(JobRequest(task=task, repo=str(repo), setup=kw.pop("setup", []), **kw))[0]
    return assistant.jobs.wait(job.id, timeout=180)


def excerpt_chunks(request: dict) -> list[tuple[str, int]]:
    """(chunk id, line count) of every command in the summary model's log excerpt."""
    text = request["messages"][-1]["content"]
    return [(m[1], int(m[2])) for m in re.finditer(r"chunk ([0-9a-f]{6}) · \w+ · [^·]+ · (\d+) lines", text)]


def test_a_summary_claiming_all_tests_pass_over_a_failing_run_is_marked(tmp_path, docker_engine, scripted_model,
                                                                        assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("shell", command=TEST_CMD), Reply.call("apply_patch", patch=BAD_PATCH),
        Reply.call("shell", command=TEST_CMD),
        lambda r: Reply.text(f"Fixed `add` 【F:calc.py†L1-L2】.\n\nAll tests pass 【{chunk_ids(r)[2]}†L1-L3】."))],
        repeat_last=True)
    assistant = assistant_for(scripted_model)
    job = run_job(assistant, repo)
    assert job.state == "succeeded"
    outcome = job.outcome
    assert outcome["kind"] == "draft" and "exited 1 after the last edit" in outcome["kind_reason"]
    [claim] = outcome["claims"]
    last_run = assistant.store.list_chunks(job.id)[2]
    assert not claim["supported"] and claim["reason"] == f"the cited run `{TEST_CMD}` (chunk {last_run.id}) exited 1"
    assert all(c["valid"] for c in job.citations)      # the citation itself resolves; the claim is what is wrong
    card = render_job_card(assistant.store, job.id)
    assert "### Result: ✎ draft" in card and "· **✎ draft**" in card
    assert f"All tests pass [log {last_run.id} \\#L1-3]" in card and f"**{UNSUPPORTED}**" in card
    assert outcome["usage"]["prompt_tokens"] > 0 and "Tokens:" in card and "model: scripted-model" in card


def test_a_job_that_edits_the_test_to_pass_is_flagged_and_no_fix(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("shell", command=TEST_CMD), Reply.call("apply_patch", patch=TEST_EDIT),
        Reply.call("shell", command=TEST_CMD),
        lambda r: Reply.text(f"The expectation was wrong; the suite passes now 【{chunk_ids(r)[2]}†L1-L3】."))],
        repeat_last=True)
    assistant = assistant_for(scripted_model)
    job = run_job(assistant, repo)
    flags = job.outcome["flags"]
    assert flags == [{"kind": "test_changed", "path": "test_calc.py",
                      "detail": "1 assertion rewritten in an existing test, though the task asked for no test changes"}]
    assert job.outcome["kind"] == "draft" and "tests themselves were changed: test_calc.py" in job.outcome["kind_reason"]
    assert all(c["supported"] for c in job.outcome["claims"])        # the run did pass: the flag tells the rest
    card = render_job_card(assistant.store, job.id)
    assert card.index("#### Review flags (1)") < card.index("#### Diff")
    assert "⚠ **test\\_calc.py** — 1 assertion rewritten" in card


def test_a_located_problem_without_a_change_is_findings(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("shell", command=TEST_CMD), Reply.call("shell", command="grep -n 'a - b' calc.py"),
        lambda r: Reply.text(f"`add` subtracts 【F:calc.py†L1-L2】, which is why `test_add` fails 【{chunk_ids(r)[0]}†L1-L3】."))],
        repeat_last=True)
    assistant = assistant_for(scripted_model)
    job = run_job(assistant, repo, task="Why does test_add fail?")
    assert job.outcome["kind"] == "findings" and job.outcome["flags"] == [] and job.outcome["claims"] == []
    assert "### Result: ⌕ findings" in render_job_card(assistant.store, job.id)


def test_a_failed_job_gets_a_summary_from_the_summary_model_with_valid_citations(tmp_path, docker_engine,
                                                                                   scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("shell", command=TEST_CMD), Reply.call("shell", command="grep -n return calc.py"),
        Reply.call("shell", command="cat test_calc.py"))], repeat_last=True)

    def summarise(request: dict) -> Reply:
        (test_run, lines), (grep, _), *_ = excerpt_chunks(request)
        return Reply.text(f"- The test run failed: `add(2, 3)` gave -1 【{test_run}†L1-L{lines}】.\n"
                          f"- `add` subtracts 【{grep}†L1-L1】; the job stopped at the step budget before a fix.\n"
                          "- Next: change `return a - b` to `return a + b`.")
    scripted_model.when_system_contains(SUMMARY_ROLE, [summarise])
    assistant = assistant_for(scripted_model, ASSISTANT_JOB_MAX_STEPS=3, ASSISTANT_SUMMARY_MODEL="summary-model")
    job = run_job(assistant, repo)
    assert job.state == "failed" and "step budget exhausted" in job.reason
    assert job.summary.startswith("- The test run failed") and job.outcome["summary_source"] == "summary model"
    assert len(job.citations) == 2 and all(c["valid"] for c in job.citations), job.citations
    assert job.outcome["kind"] == "no result" and "stopped before it finished" in job.outcome["kind_reason"]
    request = next(r for r in scripted_model.requests if SUMMARY_ROLE in r["messages"][0]["content"])
    assert request["model"] == "summary-model" and "step budget exhausted" in request["messages"][-1]["content"]
    roles = {role for role, *_ in assistant.store.usage_by_model(job_ids=[job.id])}
    assert roles == {"agent", "summary"}                                # the summary's tokens count for the job
    events = [e.kind for e in assistant.store.list_events(job.id)]
    assert events.index("summary") < events.index("finished")
    assert "(written from the log by the summary model)" in render_job_card(assistant.store, job.id)


def test_without_a_usable_summary_model_the_digest_is_the_summary(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(Reply.call("shell", command=TEST_CMD),
                                                        Reply.call("apply_patch", patch=BAD_PATCH))], repeat_last=True)
    scripted_model.when_system_contains(SUMMARY_ROLE, [Reply.error(503)], repeat_last=True)
    assistant = assistant_for(scripted_model, ASSISTANT_JOB_MAX_STEPS=2, ASSISTANT_MODEL_MAX_RETRIES=0)
    job = run_job(assistant, repo)
    chunks = assistant.store.list_chunks(job.id)
    assert job.state == "failed" and job.outcome["summary_source"] == "log digest"
    assert job.summary.startswith("The job failed: step budget exhausted")
    assert f"- The last test run, `{TEST_CMD}`, failed (exit 1, before the last edit) 【{chunks[0].id}†L" in job.summary
    assert "- Files changed (the diff is kept): `calc.py`." in job.summary
    assert job.citations and all(c["valid"] for c in job.citations)
    assert job.outcome["kind"] == "draft"                              # a diff that no test run after it backs


def test_a_model_summary_whose_citations_do_not_hold_gets_the_digest_beside_it(tmp_path, docker_engine, scripted_model,
                                                                                assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [Reply.call("shell", command="ls /no-such-dir")], repeat_last=True)
    scripted_model.when_system_contains(SUMMARY_ROLE, [Reply.text("It failed 【abcdef†L1-L2】 and tests pass.")])
    job = run_job(assistant_for(scripted_model), repo)
    assert "repeated the same failing call" in job.reason
    assert job.summary.startswith("It failed 【abcdef†L1-L2】") and "\n\nFrom the log:\nThe job failed" in job.summary
    assert [c["valid"] for c in job.citations][0] is False and any(c["valid"] for c in job.citations)
    [claim] = job.outcome["claims"]
    assert not claim["supported"] and "did not log (abcdef)" in claim["reason"]


def test_a_setup_failure_and_a_cancel_in_the_queue_have_summaries_too(tmp_path, docker_engine, scripted_model,
                                                                       assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    assistant = assistant_for(scripted_model, ASSISTANT_MAX_CONCURRENT_JOBS=1)
    scripted_model.when_system_contains(AGENT, [Reply.call("shell", command="sleep 30")], repeat_last=True)
    failing = run_job(assistant, repo, setup=["echo building; exit 3"])
    chunk = assistant.store.list_chunks(failing.id)[0]
    assert failing.outcome["summary_source"] == "log digest"           # no agent log: no model call needed
    assert f"- Setup stopped at `echo building; exit 3` (exit 3) 【{chunk.id}†L1-L1】" in failing.summary
    assert all(c["valid"] for c in failing.citations) and failing.outcome["kind"] == "no result"

    busy = assistant.jobs.submit(JobRequest(task="wait", repo=str(repo), setup=[]))[0]
    queued = assistant.jobs.submit(JobRequest(task="wait too", repo=str(repo), setup=[]))[0]
    assert assistant.jobs.cancel(queued.id)
    queued = assistant.store.get_job(queued.id)
    assert queued.state == "cancelled" and queued.summary.startswith("The job was cancelled: cancelled by the user")
    assistant.jobs.cancel(busy.id)
    busy = assistant.jobs.wait(busy.id, timeout=60)
    assert busy.state == "cancelled" and busy.summary and busy.outcome["kind"] == "no result"


def test_a_job_cancelled_from_another_process_gets_its_summary(tmp_path, docker_engine, scripted_model, assistant_for):
    import time

    from assistant.store import Store
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(Reply.call("shell", command=TEST_CMD),
                                                        Reply.call("shell", command="sleep 60"))], repeat_last=True)
    assistant = assistant_for(scripted_model)
    job = assistant.jobs.submit(JobRequest(task="Fix it", repo=str(repo), setup=[]))[0]
    deadline = time.monotonic() + 60
    while len(assistant.store.list_chunks(job.id)) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    other = Store(assistant.settings.resolved_database_url)          # what `assistant jobs cancel` does
    other.transition(job.id, "cancelled", "cancelled from the command line")
    other.close()
    job = assistant.jobs.wait(job.id, timeout=60)
    assert job.state == "cancelled" and job.outcome["kind"] == "no result"
    assert job.summary and "cancelled from the command line" in job.summary and all(c["valid"] for c in job.citations)


def test_the_embedded_models_ls_loop_stops_at_the_guard(tmp_path, docker_engine, scripted_model, assistant_for):
    """The grammar protocol, as the embedded model drives the free harness, with the call it repeated 60 times
    (with grammar actions the harness is guided unless the free one is asked for)."""
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [Reply.text(json.dumps({"tool": "shell", "arguments": {"command": "ls -la"}}))],
                                        repeat_last=True)
    assistant = assistant_for(scripted_model, ASSISTANT_TOOL_PROTOCOL="grammar", ASSISTANT_AGENT_HARNESS="free")
    job = run_job(assistant, repo)
    assert job.state == "failed"
    assert job.reason == 'stopped: the agent repeated the same call 6 times in a row (shell {"command": "ls -la"})'
    assert len(assistant.store.list_chunks(job.id)) == 6
    agent_requests = [r for r in scripted_model.requests if AGENT in r["messages"][0]["content"]]
    nudged = [i for i, r in enumerate(agent_requests) if any("the same call 3 times in a row" in (m.get("content") or "")
                                                             for m in r["messages"] if m["role"] == "user")]
    assert nudged and nudged[0] == 3                                   # the fourth turn carries the nudge
    notes = [e.data["text"] for e in assistant.store.list_events(job.id) if e.kind == "message"]
    assert any("repeated the same call 3 times" in n for n in notes)
    assert job.summary and all(c["valid"] for c in job.citations) and job.outcome["kind"] == "no result"


def test_best_of_three_ranks_a_fix_above_a_smaller_test_edit_and_no_change(tmp_path, docker_engine, scripted_model,
                                                                            assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    numbers = itertools.count(1)
    lock = threading.Lock()
    fix_and_note = FIX_PATCH.replace("+    return a + b", "+    # add, not subtract\n+    return a + b")
    plans = {1: [Reply.call("apply_patch", patch=TEST_EDIT), Reply.call("shell", command=TEST_CMD)],     # smallest diff
             2: [Reply.call("apply_patch", patch=fix_and_note), Reply.call("shell", command=TEST_CMD)],  # the fix
             3: []}                                                                                     # nothing

    def attempt(request: dict) -> Reply:
        calls = [c["function"]["arguments"] for m in request["messages"] if m["role"] == "assistant"
                 for c in m.get("tool_calls") or []]
        if not calls:
            with lock:
                return Reply.call("shell", command=f"echo attempt {next(numbers)}; {TEST_CMD}")
        number = int(re.search(r"attempt (\d)", calls[0])[1])
        plan = plans[number]
        return plan[len(calls) - 1] if len(calls) - 1 < len(plan) else Reply.text("Done.")
    scripted_model.when_system_contains(AGENT, [attempt], repeat_last=True)
    assistant = assistant_for(scripted_model)
    jobs = assistant.jobs.submit(JobRequest(task="Fix the failing test", repo=str(repo), setup=[], attempts=3))
    done = [assistant.jobs.wait(j.id, timeout=240) for j in jobs]
    done = sorted((assistant.store.get_job(j.id) for j in done), key=lambda j: j.outcome["rank"])
    assert [j.outcome["kind"] for j in done] == ["fix", "draft", "no result"], [j.outcome.get("kind_reason") for j in done]
    assert done[0].outcome["recommended"] and not done[1].outcome["recommended"]
    assert done[1].outcome["diff_lines"] < done[0].outcome["diff_lines"]   # size alone would have picked the test edit
