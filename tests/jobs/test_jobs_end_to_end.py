"""Whole jobs on real repositories in real containers, driven by the scripted model over real HTTP."""
from __future__ import annotations

import json
import subprocess

import pytest

from assistant.jobs.manager import JobRequest
from assistant.testing.scripted_model import Reply, by_turn, chunk_ids, system_text
from tests.fixtures.repos import FIX_PATCH, git, make_calc_repo

pytestmark = pytest.mark.docker
AGENT = "You are a careful software engineer"
TEST_CMD = "python3 -m unittest -v 2>&1"


def fixing_script(summary=None):
    """Reproduce, patch, re-run, summarise with citations built from the chunk ids the tool results carried."""
    def final(request):
        ids = chunk_ids(request)
        text = summary(ids) if summary else (
            "`add` subtracted instead of adding 【F:calc.py†L1-L2】. The test failed before the fix "
            f"【{ids[0]}†L1-L3】 and the whole suite passes after it 【{ids[2]}†L1-L3】.")
        return Reply.text(text)
    return by_turn(Reply.call("shell", command=TEST_CMD), Reply.call("apply_patch", patch=FIX_PATCH),
                   Reply.call("shell", command=TEST_CMD), final)


def run_job(assistant, repo, **kw):
    job = assistant.jobs.submit(JobRequest(task="Fix the failing test", repo=str(repo), setup=[], **kw))[0]
    return assistant.jobs.wait(job.id, timeout=180)


@pytest.mark.parametrize("backend", ["docker", "local"])
def test_job_reproduces_fixes_and_cites(tmp_path, docker_engine, scripted_model, assistant_for, backend,
                                        reachable_data_dir):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [fixing_script()], repeat_last=True)
    assistant = assistant_for(scripted_model, ASSISTANT_SANDBOX_BACKEND=backend, ASSISTANT_DATA_DIR=reachable_data_dir)
    job = run_job(assistant, repo)

    assert job.state == "succeeded", job.reason
    chunks = assistant.store.list_chunks(job.id)
    before, patch, after = chunks[0], chunks[1], chunks[2]
    assert before.exit_code != 0 and "FAILED" in before.text
    assert patch.command == "apply_patch" and patch.exit_code == 0
    assert after.exit_code == 0 and "OK" in after.text
    assert [c["valid"] for c in job.citations] == [True, True, True], job.citations
    assert job.citations[0]["target"] == "calc.py" and job.citations[1]["target"] == before.id
    # The diff is the fix, and it applies to the original repository with git apply.
    diff = assistant.store.get_artifact(job.id, "diff")
    assert "-    return a - b" in diff and "+    return a + b" in diff
    patch_text = assistant.store.get_artifact(job.id, "patch")
    subprocess.run(["git", "apply", "--check", "-"], input=patch_text, text=True, cwd=repo, check=True)
    # The network was cut before the agent's first step, and it says so.
    assert job.setup_network and "lo" in job.agent_network
    assert job.backend == backend
    # AGENTS.md reached the agent's instructions; the test runs counted as tests.
    system = next(r for r in scripted_model.requests if AGENT in r["messages"][0]["content"])["messages"][0]["content"]
    assert "python3 -m unittest -v" in system
    assert job.outcome["tests_passed"] is True
    events = [e.kind for e in assistant.store.list_events(job.id)]
    assert events[0] == "state" and "step" in events and events[-1] == "finished"
    assert job.prompt_tokens > 0 and job.steps == 4


def test_wrong_citations_are_marked_invalid(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    script = fixing_script(lambda ids: (f"Fixed 【F:calc.py†L1-L2】 but also 【F:nope.py†L1-L2】, "
                                        f"【abcdef†L1-L2】 and 【{ids[2]}†L1-L999】."))
    scripted_model.when_system_contains(AGENT, [script], repeat_last=True)
    job = run_job(assistant_for(scripted_model), repo)
    assert job.state == "succeeded"
    assert [(c["target"], c["valid"]) for c in job.citations] == [
        ("calc.py", True), ("nope.py", False), ("abcdef", False), (job.citations[3]["target"], False)]
    assert "past its end" in job.citations[3]["reason"]


def test_text_protocol_drives_the_same_job_to_the_same_diff(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    fence = "```"
    def final(request):
        return Reply.text(f"Fixed the sign 【F:calc.py†L1-L2】, tests pass 【{chunk_ids(request)[2]}†L1-L3】.")
    script = by_turn(
        Reply.text(f"Let me run the tests.\n{fence}tool shell\n{json.dumps({'command': TEST_CMD})}\n{fence}"),
        Reply.text("Not quite the format:\n```tool shel\n{}\n```"),          # malformed: gets a reminder
        Reply.text(f"{fence}tool apply_patch\n{FIX_PATCH}\n{fence}"),
        Reply.text(f"{fence}tool shell\n{json.dumps({'command': TEST_CMD})}\n{fence}"),
        final)
    # The endpoint refuses native tools: the agent falls back to the text protocol by itself.
    scripted_model.script([Reply(status=400, content="tools are not supported by this model")],
                          match=lambda r: bool(r.get("tools")))
    scripted_model.when_system_contains(AGENT, [script], repeat_last=True)
    assistant = assistant_for(scripted_model)
    job = run_job(assistant, repo)
    assert job.state == "succeeded", job.reason
    assert all(c["valid"] for c in job.citations)
    diff = assistant.store.get_artifact(job.id, "diff")
    assert "+    return a + b" in diff, [(c.command, c.text[:300]) for c in assistant.store.list_chunks(job.id)]
    reminders = [m for r in scripted_model.requests for m in r["messages"] if m["role"] == "user"
                 and "shel" in (m.get("content") or "") and "tool" in (m.get("content") or "").lower()]
    assert reminders, "the malformed block should have been answered with a format reminder"


def test_step_budget_stops_a_runaway_job(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    n = iter(range(10**6))
    scripted_model.when_system_contains(AGENT, [lambda r: Reply.call("shell", command=f"echo {next(n)}")],
                                        repeat_last=True)
    job = run_job(assistant_for(scripted_model, ASSISTANT_JOB_MAX_STEPS=3), repo)
    assert job.state == "failed"
    assert "step budget exhausted" in job.reason and "ASSISTANT_JOB_MAX_STEPS" in job.reason


def test_repeated_failing_call_is_stopped(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [Reply.call("shell", command="false")], repeat_last=True)
    job = run_job(assistant_for(scripted_model), repo)
    assert job.state == "failed"
    assert "repeated the same failing call 3 times" in job.reason


def test_malformed_tool_call_goes_back_to_the_model(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    script = by_turn(Reply(tool_calls=[("shell", "{not json")]), Reply.call("apply_patch", patch="garbage"),
                     Reply.text("Nothing to do after all."))
    scripted_model.when_system_contains(AGENT, [script], repeat_last=True)
    job = run_job(assistant_for(scripted_model), repo)
    assert job.state == "succeeded"
    tool_msgs = [m["content"] for m in scripted_model.requests[-1]["messages"] if m["role"] == "tool"]
    assert "not valid JSON" in tool_msgs[0]
    assert "Patch refused" in tool_msgs[1]


def test_model_down_fails_the_job_with_a_clear_reason(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [Reply.error(503)], repeat_last=True)
    job = run_job(assistant_for(scripted_model, ASSISTANT_MODEL_MAX_RETRIES=1), repo)
    assert job.state == "failed" and "model error" in job.reason and "503" in job.reason


def test_best_of_three_ranks_and_recommends(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    bad_patch = FIX_PATCH.replace("a + b", "b + a + 0")
    def script(request):
        # The attempt is told apart by nothing but chance in real life; here by the job id in the tool results.
        return fixing_script()(request)
    scripted_model.when_system_contains(AGENT, [script], repeat_last=True)
    assistant = assistant_for(scripted_model)
    jobs = assistant.jobs.submit(JobRequest(task="Fix the failing test", repo=str(repo), setup=[], attempts=3))
    [assistant.jobs.wait(j.id, timeout=240) for j in jobs]
    done = [assistant.store.get_job(j.id) for j in jobs]
    assert len({j.group_id for j in done}) == 1 and len(done) == 3
    assert all(j.state == "succeeded" for j in done), [j.reason for j in done]
    ranks = sorted((j.outcome["rank"], j.outcome["recommended"]) for j in done)
    assert ranks == [(1, True), (2, False), (3, False)]
    assert bad_patch  # kept for symmetry with a future divergent-attempt scenario


def test_cancel_stops_a_running_job(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [Reply.call("shell", command="sleep 60")], repeat_last=True)
    assistant = assistant_for(scripted_model)
    job = assistant.jobs.submit(JobRequest(task="wait", repo=str(repo), setup=[]))[0]
    import time
    deadline = time.time() + 60
    while not any(AGENT in system_text(r) for r in list(scripted_model.requests)) and time.time() < deadline:
        time.sleep(0.1)  # the agent has asked for its command: the cancel meets a running job, whatever the load
    assert assistant.store.get_job(job.id).state == "running"
    started = time.time()
    assert assistant.jobs.cancel(job.id)
    final = assistant.jobs.wait(job.id, timeout=60)
    assert final.state == "cancelled"
    assert time.time() - started < 20


def test_cancel_during_setup_stops_the_setup_command(tmp_path, docker_engine, scripted_model, assistant_for):
    """The sandbox is known to the job as soon as it runs: a cancel while setup runs closes it, so the setup
    command dies with it instead of running on until preparation returns."""
    import time

    from tests.jobs.queue_harness import managed_containers
    repo = make_calc_repo(tmp_path / "calc")
    assistant = assistant_for(scripted_model, ASSISTANT_SETUP_CACHE="false")
    job = assistant.jobs.submit(JobRequest(task="x", repo=str(repo), setup=["sleep 120"]))[0]
    deadline = time.time() + 60
    while assistant.store.get_job(job.id).state != "setting_up" and time.time() < deadline:
        time.sleep(0.1)
    assert managed_containers(job.id), "the setup's sandbox should be running"
    started = time.time()
    assert assistant.jobs.cancel(job.id)
    assert assistant.store.get_job(job.id).state == "cancelled"  # said at once
    assistant.jobs.wait(job.id, timeout=60)
    while managed_containers(job.id) and time.time() - started < 20:
        time.sleep(0.2)
    assert managed_containers(job.id) == [] and time.time() - started < 20
    final = assistant.store.get_job(job.id)
    assert final.state == "cancelled" and "before the agent started" in final.reason


def test_missing_repo_fails_clearly(tmp_path, docker_engine, scripted_model, assistant_for):
    assistant = assistant_for(scripted_model)
    job = assistant.jobs.submit(JobRequest(task="x", repo=str(tmp_path / "nope"), setup=[]))[0]
    job = assistant.jobs.wait(job.id, timeout=60)
    assert job.state == "failed" and str(tmp_path / "nope") in job.reason


def test_failing_setup_ends_the_job_with_the_log_cited(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    assistant = assistant_for(scripted_model)
    job = assistant.jobs.submit(JobRequest(task="x", repo=str(repo), setup=["echo building; exit 3"]))[0]
    job = assistant.jobs.wait(job.id, timeout=60)
    assert job.state == "failed" and "exit" in job.reason
    chunk = assistant.store.list_chunks(job.id)[0]
    assert f"【{chunk.id}†L1-L1】" in job.reason and "building" in chunk.text


def test_follow_up_job_starts_from_the_previous_result(tmp_path, docker_engine, scripted_model, assistant_for):
    repo = make_calc_repo(tmp_path / "calc")
    def task_is(text):
        return lambda r: AGENT in r["messages"][0]["content"] and r["messages"][1]["content"].startswith("Task:\n" + text)
    scripted_model.script([fixing_script()], match=task_is("Fix it"), repeat_last=True)
    add_test = """*** Begin Patch
*** Update File: test_calc.py
@@     def test_mul(self):
         self.assertEqual(mul(2, 3), 6)
+
+    def test_add_negative(self):
+        self.assertEqual(add(-2, -3), -5)
*** End Patch"""
    second = by_turn(Reply.call("apply_patch", patch=add_test), Reply.call("shell", command=TEST_CMD),
                     lambda r: Reply.text(f"Added a test; all pass 【{chunk_ids(r)[-1]}†L1-L4】."))
    scripted_model.script([second], match=task_is("also add a test"), repeat_last=True)
    assistant = assistant_for(scripted_model)
    thread = assistant.store.create_thread(user_id=None, repo=str(repo))
    first = assistant.jobs.submit(JobRequest(task="Fix it", repo=str(repo), setup=[], thread_id=thread.id))[0]
    assert assistant.jobs.wait(first.id, timeout=180).state == "succeeded"
    follow = assistant.jobs.submit(JobRequest(task="also add a test for that", repo=str(repo), setup=[],
                                              thread_id=thread.id, parent_job_id=first.id))[0]
    follow = assistant.jobs.wait(follow.id, timeout=180)
    assert follow.state == "succeeded", follow.reason
    assert follow.number == 2
    run = assistant.store.list_chunks(follow.id)[-1]
    assert run.exit_code == 0 and "test_add_negative" in run.text  # the parent's fix was in place
    diff = assistant.store.get_artifact(follow.id, "diff")
    assert "+    return a + b" in diff and "test_add_negative" in diff
    task_msg = next(r for r in scripted_model.requests if "also add a test" in json.dumps(r))["messages"][1]["content"]
    assert "follows job 1" in task_msg
    git(repo, "status")  # the user's repository was never touched
    assert "return a - b" in (repo / "calc.py").read_text()


def test_shutdown_marks_running_jobs_interrupted_not_cancelled(tmp_path, docker_engine, scripted_model, settings_for):
    from assistant.core import Assistant
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [Reply.call("shell", command="sleep 60")], repeat_last=True)
    a = Assistant(settings_for(scripted_model, ASSISTANT_SANDBOX_BACKEND="docker"))
    a.start(sweep=False)
    job = a.jobs.submit(JobRequest(task="wait", repo=str(repo), setup=[]))[0]
    import time
    deadline = time.time() + 60
    while a.store.get_job(job.id).state != "running" and time.time() < deadline:
        time.sleep(0.1)
    store = a.store
    a.jobs.shutdown()
    final = store.get_job(job.id)
    assert final.state == "interrupted" and "server shut down" in final.reason
    store.close()
