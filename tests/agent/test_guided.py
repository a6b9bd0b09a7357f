"""The guided harness end to end through the job pipeline: the real prepare, patch engine, diff and citation
checks over a fake sandbox (a temporary directory), the scripted model over real HTTP answering the
constrained actions; and the real assessment (outcome kind, claims) on top of what the job logged."""
from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass

import pytest

from assistant.agent.claims import check_claims
from assistant.agent.evidence import LogRecord
from assistant.agent.guided import failure_score
from assistant.agent.harness import uses_guided
from assistant.agent.outcome import decide_outcome
from assistant.agent.steering import SteerNote
from assistant.jobs import events as ev
from assistant.jobs import states
from assistant.jobs.pipeline import JobLimits, JobSpec, run_job
from assistant.llm.client import ModelClient
from assistant.sandbox import SandboxConfig, prepare
from assistant.testing.scripted_model import Reply
from tests.fixtures.repos import make_calc_repo, make_repo
from tests.jobs.fake_sandbox import FakeSandbox

GUIDED = "You fix code in a git repository"
FREE = "You are a careful software engineer"


@dataclass
class Chunk:
    id: str
    job_id: str
    command: str
    text: str
    exit_code: int | None
    phase: str

    @property
    def line_count(self) -> int:
        return len(self.text.splitlines())


class MemoryLog:
    def __init__(self):
        self.chunks: dict[str, Chunk] = {}

    def add_chunk(self, *, job_id, command, text, exit_code, phase="agent", **_timing):
        chunk = Chunk(secrets.token_hex(3), job_id, command, text, exit_code, phase)
        self.chunks[chunk.id] = chunk
        return chunk

    def chunk_owner(self, chunk_id):
        chunk = self.chunks.get(chunk_id)
        return None if chunk is None else (chunk.line_count, chunk.job_id)

    def records(self) -> list[LogRecord]:
        return [LogRecord(c.id, i, c.phase, c.command, c.exit_code, line_count=c.line_count, text=c.text)
                for i, c in enumerate(self.chunks.values())]


@pytest.fixture
def jobs(tmp_path, scripted_model, settings_for):
    config = SandboxConfig(data_dir=tmp_path / "data", cache_enabled=False)
    sandboxes: list[FakeSandbox] = []

    def start(**kw):
        sandbox = FakeSandbox.start(**kw)
        sandboxes.append(sandbox)
        return sandbox
    start.backend = "fake"

    class Jobs:
        log = MemoryLog()
        events: list = []

        def run(self, repo, task="Fix the failing test", harness="guided", protocol="grammar", candidates=3,
                max_steps=60, steering=None):
            settings = settings_for(scripted_model, ASSISTANT_AGENT_HARNESS=harness, ASSISTANT_JOB_MAX_STEPS=max_steps,
                                    ASSISTANT_TOOL_PROTOCOL=protocol, ASSISTANT_GUIDED_CANDIDATES=candidates)
            return run_job(JobSpec(job_id="job1", task=task, repo=str(repo), setup=[]),
                           prepare=lambda request, **cb: prepare(request, config, start=start, **cb), config=config,
                           model=ModelClient(settings), limits=JobLimits.from_settings(settings), job_log=self.log,
                           emit=self.events.append, steering=steering)

        def kind(self, outcome) -> str:
            files = [f[1] for f in outcome.outcome.files]
            return decide_outcome(self.log.records(), changed_files=files,
                                  agent_finished=outcome.state == states.SUCCEEDED).kind
    return Jobs()


def action(**fields) -> Reply:
    return Reply.text(json.dumps(fields))


def guided_requests(server) -> list[dict]:
    return [r for r in server.requests if GUIDED in r["messages"][0]["content"]]


def test_the_harness_runs_the_tests_shows_the_code_and_applies_the_models_edit(tmp_path, scripted_model, jobs):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(GUIDED, [
        action(action="replace_lines", path="calc.py", start=2, end=2, text="    return a + b")])
    outcome = jobs.run(repo)

    assert outcome.state == states.SUCCEEDED, outcome.reason
    assert "+    return a + b" in outcome.diff and "-    return a - b" in outcome.patch
    subprocess.run(["git", "apply", "--check", "-"], input=outcome.patch, text=True, cwd=repo, check=True)
    # One model turn: it saw the failing run and the code under test with line numbers, and chose from a schema.
    [request] = guided_requests(scripted_model)
    prompt = request["messages"][1]["content"]
    assert "AssertionError: -1 != 5" in prompt and "2|     return a - b" in prompt
    assert "python3 -m unittest -v" in prompt                   # the AGENTS.md test command was used
    assert "anyOf" in json.dumps(request.get("response_format"))
    # The tests ran before and after the edit; the summary is built from the log, and every citation holds.
    tests = outcome.outcome.tests
    assert [t["exit_code"] == 0 for t in tests] == [False, True] and outcome.outcome.tests_passed is True
    assert outcome.citations and all(c["valid"] for c in outcome.citations), outcome.citations
    claims = check_claims(outcome.summary, jobs.log.records(), named_tests=outcome.outcome.test_commands)
    assert claims and all(c.supported for c in claims), claims
    assert jobs.kind(outcome) == "fix"
    assert "return a - b" in (repo / "calc.py").read_text()     # the user's repository was never touched
    messages = [e.text for e in jobs.events if isinstance(e, ev.AgentMessage)]
    assert any("calc.py:1" in m for m in messages), messages   # the definition of `add`, found by name


def test_a_failing_candidate_is_rolled_back_and_the_next_starts_from_the_original(tmp_path, scripted_model, jobs):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(GUIDED, [
        action(action="replace_text", path="calc.py", old="a - b", new="a * b"),     # wrong: tests still fail
        action(action="finish", summary="done"),
        action(action="replace_text", path="calc.py", old="return a - b", new="return a + b")])
    outcome = jobs.run(repo)

    assert outcome.state == states.SUCCEEDED, outcome.reason
    assert "a * b\n" not in outcome.patch.replace("return a * b\n\n", "") and "+    return a + b" in outcome.diff
    third = guided_requests(scripted_model)[2]["messages"][1]["content"]
    assert "Earlier candidates" in third and "Candidate 1 changed calc.py" in third
    assert "2|     return a - b" in third                    # the next candidate saw the original code
    # Within the first candidate the model saw its edit's failing run.
    second = guided_requests(scripted_model)[1]["messages"]
    assert "The tests still fail" in second[-1]["content"]
    assert [t["exit_code"] == 0 for t in outcome.outcome.tests] == [False, False, True]
    assert "(candidate 2 of up to 3)" in outcome.summary and jobs.kind(outcome) == "fix"


class OneMessage:
    """A SteerInbox holding one message the user sent before the harness's first model turn."""

    def __init__(self, text):
        self.waiting = [SteerNote("m1", text)]
        self.receipts: list[tuple] = []

    def take(self):
        notes, self.waiting = self.waiting, []
        return notes

    def delivered(self, notes, step, how, stopped=None):
        self.receipts += [("delivered", n.id, how, stopped) for n in notes]

    def acknowledged(self, notes, excerpt):
        self.receipts += [("acknowledged", n.id, excerpt) for n in notes]


def test_a_steering_message_is_guidance_for_this_candidate_and_the_later_ones(tmp_path, scripted_model, jobs):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(GUIDED, [
        action(action="replace_text", path="calc.py", old="a - b", new="a * b"),
        action(action="finish", summary="done"),
        action(action="replace_text", path="calc.py", old="return a - b", new="return a + b")])
    inbox = OneMessage("Only change calc.py; keep the function names.")
    outcome = jobs.run(repo, steering=inbox)
    assert outcome.state == states.SUCCEEDED, outcome.reason
    first, _second, third = guided_requests(scripted_model)
    assert "> Only change calc.py; keep the function names." in first["messages"][-1]["content"]
    assert "> Only change calc.py; keep the function names." in third["messages"][1]["content"]  # candidate 2 too
    assert inbox.receipts == [
        ("delivered", "m1", "guidance", None),
        ("acknowledged", "m1", '{"action": "replace_text", "path": "calc.py", "old": "a - b", "new": "a * b"}')]


def test_no_passing_candidate_leaves_the_code_as_it_was_and_fails(tmp_path, scripted_model, jobs):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(GUIDED, [
        action(action="replace_lines", path="calc.py", start=2, end=2, text="    return a * b"),
        action(action="finish", summary="I fixed it, the tests pass now")], repeat_last=True)
    outcome = jobs.run(repo, candidates=2)

    assert outcome.state == states.FAILED and "left as it was" in outcome.reason
    assert outcome.patch.strip() == "" and outcome.summary == ""
    assert jobs.kind(outcome) == "no result"


def test_a_small_models_sloppy_snippet_and_test_edits_are_handled(tmp_path, scripted_model, jobs):
    """A snippet without its indentation still finds its line; an edit of a test file is refused with a reason."""
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(GUIDED, [
        action(action="replace_text", path="test_calc.py", old="5", new="-1"),
        action(action="view", path="calc.py", start=1, end=2),
        action(action="replace_text", path="/workspace/calc.py", old="return a - b\n", new="return a + b")])
    outcome = jobs.run(repo)

    assert outcome.state == states.SUCCEEDED, outcome.reason
    assert outcome.outcome.files == [["modified", "calc.py"]] and "+    return a + b" in outcome.diff
    turns = guided_requests(scripted_model)[2]["messages"]
    assert "test_calc.py is a test file" in turns[3]["content"]
    assert turns[5]["content"].startswith("### calc.py (lines 1-2 of 6)")


def test_a_task_without_a_failing_test_is_localized_from_its_words(tmp_path, scripted_model, jobs):
    repo = make_repo(tmp_path / "parity", {
        "parity.py": "def is_even(n):\n    return n % 2 == 0\n",
        "test_parity.py": "import unittest\n\nfrom parity import is_even\n\n\nclass T(unittest.TestCase):\n"
                          "    def test_even(self):\n        self.assertTrue(is_even(2))\n"})
    scripted_model.when_system_contains(GUIDED, [
        action(action="insert_lines", path="parity.py", after=2, text="\n\ndef is_odd(n):\n    return n % 2 == 1\n")])
    outcome = jobs.run(repo, task="Add a function is_odd(n) to parity.py.")

    assert outcome.state == states.SUCCEEDED, outcome.reason
    prompt = guided_requests(scripted_model)[0]["messages"][1]["content"]
    assert "pass now" in prompt and "### parity.py" in prompt and "1| def is_even(n):" in prompt
    # No AGENTS.md: the test command was detected from the files.
    assert outcome.outcome.tests[0]["command"].startswith("python3 -m")
    assert "+def is_odd(n):" in outcome.diff and jobs.kind(outcome) == "fix"


def test_auto_uses_the_guided_harness_only_with_grammar_actions():
    assert uses_guided("auto", "grammar") and uses_guided("guided", "native")
    assert not uses_guided("auto", "native") and not uses_guided("free", "grammar")
    with pytest.raises(ValueError, match="choose one of"):
        uses_guided("fast", "native")


def test_failure_scores_rank_candidates():
    assert failure_score("OK", 0) == 0
    assert failure_score("Ran 2 tests\n\nFAILED (failures=1)", 1) == 1
    assert failure_score("FAILED (errors=1)", 1) == 10
    assert failure_score("==== 2 failed, 3 passed in 0.1s ====", 1) == 2
    assert failure_score("Segmentation fault", 139) == 100


# ---------------------------------------------------------------------------------------------- claims of no work
def test_a_first_reply_that_claims_a_fix_is_sent_back_then_the_job_fails(tmp_path, scripted_model, jobs):
    """The free loop: a small model's first reply 'reports' a fix; no command ran, nothing changed."""
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(FREE, [Reply.text("I fixed calc.py; the test now passes.")], repeat_last=True)
    outcome = jobs.run(repo, harness="free", protocol="native")

    assert outcome.state == states.FAILED and "without running a command" in outcome.reason
    assert outcome.summary == "" and outcome.patch.strip() == ""
    second = [r for r in scripted_model.requests if FREE in r["messages"][0]["content"]][1]["messages"]
    assert "You have not run any command" in second[-1]["content"]


def test_a_first_final_answer_after_the_nudge_with_work_done_succeeds(tmp_path, scripted_model, jobs):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(FREE, [
        Reply.text("Done, the tests pass."), Reply.call("shell", command="python3 -m unittest -v 2>&1"),
        Reply.text("The tests fail; I could not fix it.")])
    outcome = jobs.run(repo, harness="free", protocol="native")
    assert outcome.state == states.SUCCEEDED and outcome.summary.startswith("The tests fail")


def test_a_summary_saying_the_tests_pass_after_a_failing_last_run_is_unsupported(tmp_path, scripted_model, jobs):
    repo = make_calc_repo(tmp_path / "calc")
    wrong = "*** Begin Patch\n*** Update File: calc.py\n@@\n-    return a - b\n+    return a * b\n*** End Patch"
    scripted_model.when_system_contains(FREE, [
        Reply.call("shell", command="python3 -m unittest -v 2>&1"), Reply.call("apply_patch", patch=wrong),
        Reply.call("shell", command="python3 -m unittest -v 2>&1"),
        Reply.text("Fixed the operator in calc.py. The failing test now passes.")])
    outcome = jobs.run(repo, harness="free", protocol="native")

    assert outcome.state == states.SUCCEEDED and jobs.kind(outcome) == "draft"
    [claim] = check_claims(outcome.summary, jobs.log.records(), named_tests=outcome.outcome.test_commands)
    assert not claim.supported and "the last test run failed" in claim.reason, claim


# ---------------------------------------------------------------------------------------------- a real container
@pytest.mark.docker
def test_the_guided_harness_fixes_a_repository_in_a_real_container(tmp_path, docker_engine, scripted_model,
                                                                   assistant_for):
    from assistant.jobs.manager import JobRequest

    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(GUIDED, [
        action(action="replace_text", path="calc.py", old="return a - b", new="return a + b")])
    assistant = assistant_for(scripted_model, ASSISTANT_AGENT_HARNESS="guided")
    job = assistant.jobs.submit(JobRequest(task="Fix the failing test", repo=str(repo), setup=[]))[0]
    job = assistant.jobs.wait(job.id, timeout=180)

    assert job.state == "succeeded", job.reason
    assert job.backend == "docker" and "lo" in job.agent_network
    assert "+    return a + b" in assistant.store.get_artifact(job.id, "diff")
    assert job.outcome["kind"] == "fix" and job.outcome["tests_passed"] is True
    assert all(c["valid"] for c in job.citations) and all(c["supported"] for c in job.outcome["claims"])
    commands = [c.command for c in assistant.store.list_chunks(job.id)]
    assert commands[-2:] == ["apply_patch", "python3 -m unittest -v"], commands


def test_out_of_budget_in_the_middle_of_a_candidate_rolls_it_back(tmp_path, scripted_model, jobs):
    """A step budget that ends inside a failing candidate leaves the original code, and says why."""
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(GUIDED, [
        action(action="replace_lines", path="calc.py", start=2, end=2, text="    return a * b"),
        action(action="view", path="calc.py", start=1, end=6)], repeat_last=True)
    outcome = jobs.run(repo, max_steps=3)

    assert outcome.state == states.FAILED and outcome.reason.startswith("step budget exhausted"), outcome.reason
    assert "left as it was" in outcome.reason and outcome.patch.strip() == ""


def test_a_snippet_edit_that_names_the_test_file_from_the_traceback_goes_to_the_code_shown(tmp_path, scripted_model,
                                                                                        jobs):
    """What the real 1.5B model did: the right snippet, with the path copied from the traceback."""
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(GUIDED, [
        action(action="replace_text", path="/workspace/test_calc.py", old="return a - b", new="return a + b")])
    outcome = jobs.run(repo)

    assert outcome.state == states.SUCCEEDED, outcome.reason
    assert outcome.outcome.files == [["modified", "calc.py"]]
    assert any("its text is in calc.py" in e.text for e in jobs.events if isinstance(e, ev.AgentMessage))
