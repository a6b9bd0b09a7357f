"""The job pipeline as a plain function: the real prepare, agent, diff and citation checks over a fake sandbox
(a temporary directory), the scripted model over real HTTP; no store, no Docker, no web app."""
from __future__ import annotations

import secrets
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from assistant.agent.steering import SteerNote
from assistant.domain import events as ev
from assistant.domain import states
from assistant.jobs.pipeline import JobLimits, JobSpec, ParentResult, RunControl, RunLost, run_job
from assistant.llm.client import ModelClient
from assistant.sandbox import SandboxConfig, prepare
from assistant.testing.scripted_model import Reply, by_turn, chunk_ids
from tests.fixtures.repos import FIX_PATCH, make_calc_repo
from tests.jobs.fake_sandbox import FakeSandbox

AGENT = "You are a careful software engineer"
TEST_CMD = "python3 -m unittest -v 2>&1"


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
    """The pipeline's JobLog port, kept in a dict."""

    def __init__(self):
        self.chunks: dict[str, Chunk] = {}

    def add_chunk(self, *, job_id, command, text, exit_code, phase="agent", **_timing):
        chunk = Chunk(secrets.token_hex(3), job_id, command, text, exit_code, phase)
        self.chunks[chunk.id] = chunk
        return chunk

    def chunk_owner(self, chunk_id):
        chunk = self.chunks.get(chunk_id)
        return None if chunk is None else (chunk.line_count, chunk.job_id)


@pytest.fixture
def harness(tmp_path, scripted_model, settings_for):
    settings = settings_for(scripted_model)
    config = SandboxConfig(data_dir=tmp_path / "data", cache_enabled=False)
    model = ModelClient(settings)
    started: list[FakeSandbox] = []

    def start(**kw):
        sandbox = FakeSandbox.start(**kw)
        started.append(sandbox)
        return sandbox
    start.backend = "fake"

    class Harness:
        log = MemoryLog()
        events: list[ev.JobEventRecord] = []
        sandboxes = started

        def run(self, spec: JobSpec, control: RunControl | None = None, emit=None, steering=None, limits=None):
            return run_job(spec, prepare=lambda request, **cb: prepare(request, config, start=start, **cb),
                           config=config, model=model, limits=limits or JobLimits.from_settings(settings),
                           job_log=self.log, emit=emit or self.events.append, control=control, steering=steering)
    return Harness()


def fixing_script(summary=None):
    def final(request):
        ids = chunk_ids(request)
        return Reply.text(summary(ids) if summary else
                          f"`add` subtracted 【F:calc.py†L1-L2】; failing before 【{ids[0]}†L1-L3】, passing after "
                          f"【{ids[2]}†L1-L3】.")
    return by_turn(Reply.call("shell", command=TEST_CMD), Reply.call("apply_patch", patch=FIX_PATCH),
                   Reply.call("shell", command=TEST_CMD), final)


def test_a_job_runs_to_a_checked_summary_and_a_diff(tmp_path, scripted_model, harness):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [fixing_script()], repeat_last=True)
    outcome = harness.run(JobSpec(job_id="job1", task="Fix the failing test", repo=str(repo), setup=[]))

    assert outcome.state == states.SUCCEEDED, outcome.reason
    assert [c["valid"] for c in outcome.citations] == [True, True, True]
    assert "+    return a + b" in outcome.diff and "-    return a - b" in outcome.patch
    subprocess.run(["git", "apply", "--check", "-"], input=outcome.patch, text=True, cwd=repo, check=True)
    assert outcome.cited_files["calc.py"].startswith("def add")
    assert outcome.outcome.tests_passed is True and outcome.outcome.files == [["modified", "calc.py"]]
    assert outcome.steps == 4 and outcome.prompt_tokens > 0
    kinds = [type(e).__name__ for e in harness.events if not isinstance(e, ev.OutputDelta)]
    assert kinds[:3] == ["StateChanged", "SandboxReady", "StateChanged"]
    assert kinds.count("ToolStarted") == 3 and kinds.count("StepFinished") == 3
    states_seen = [e.state for e in harness.events if isinstance(e, ev.StateChanged)]
    assert states_seen == [states.PREPARING, states.RUNNING]
    ready = next(e for e in harness.events if isinstance(e, ev.SandboxReady))
    assert ready.backend == "fake" and ready.agent_network == "none (fake sandbox)" and len(ready.base_commit) == 40
    assert any(isinstance(e, ev.OutputDelta) and "FAILED" in e.text for e in harness.events)
    # AGENTS.md reached the agent; the sandbox is closed when the pipeline returns.
    assert "python3 -m unittest -v" in scripted_model.requests[0]["messages"][0]["content"]
    assert all(s.closed for s in harness.sandboxes)
    assert "return a - b" in (repo / "calc.py").read_text()  # the user's repository was never touched


def test_failing_setup_ends_with_its_log_cited(tmp_path, harness):
    repo = make_calc_repo(tmp_path / "calc")
    outcome = harness.run(JobSpec(job_id="job2", task="x", repo=str(repo), setup=["echo building; exit 3"]))
    chunk = next(iter(harness.log.chunks.values()))
    assert outcome.state == states.FAILED and not outcome.agent_ran
    assert f"【{chunk.id}†L1-L1】" in outcome.reason and chunk.phase == "setup" and "building" in chunk.text
    assert [e.state for e in harness.events if isinstance(e, ev.StateChanged)] == [states.PREPARING, states.SETTING_UP]
    ran = next(e for e in harness.events if isinstance(e, ev.SetupCommandRan))
    assert ran.exit_code == 3 and ran.chunk_id == chunk.id
    assert all(s.closed for s in harness.sandboxes)


def test_a_missing_repository_fails_clearly(tmp_path, harness):
    outcome = harness.run(JobSpec(job_id="job3", task="x", repo=str(tmp_path / "nope"), setup=[]))
    assert outcome.state == states.FAILED and str(tmp_path / "nope") in outcome.reason


def test_cancel_stops_a_running_command_quickly(tmp_path, scripted_model, harness):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [Reply.call("shell", command="sleep 60")], repeat_last=True)
    control = RunControl()

    def cancel_once_running(event):
        harness.events.append(event)
        if isinstance(event, ev.ToolStarted):
            threading.Timer(0.5, control.cancel).start()
    started = time.monotonic()
    outcome = harness.run(JobSpec(job_id="job4", task="wait", repo=str(repo), setup=[]), control, cancel_once_running)
    assert outcome.state == states.CANCELLED and time.monotonic() - started < 20


def test_a_lost_run_raises_instead_of_returning_an_outcome(tmp_path, scripted_model, harness):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [Reply.call("shell", command="sleep 60")], repeat_last=True)
    control = RunControl()

    def lose_once_running(event):
        if isinstance(event, ev.ToolStarted):
            threading.Timer(0.3, control.lose, ["another worker took the job over"]).start()
    with pytest.raises(RunLost, match="another worker"):
        harness.run(JobSpec(job_id="job5", task="wait", repo=str(repo), setup=[]), control, lose_once_running)
    assert all(s.closed for s in harness.sandboxes)


def test_a_follow_up_starts_from_its_parents_patch(tmp_path, scripted_model, harness):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("shell", command=TEST_CMD), lambda r: Reply.text(f"Passes 【{chunk_ids(r)[0]}†L1-L3】."))],
        repeat_last=True)
    parent_patch = subprocess.run(["git", "diff"], cwd=_fixed_copy(repo, tmp_path), capture_output=True,
                                  text=True, check=True).stdout
    spec = JobSpec(job_id="job6", task="check it", repo=str(repo), setup=[],
                   parent=ParentResult(1, "fix add", "fixed add", parent_patch), citable_jobs=frozenset({"job0"}))
    outcome = harness.run(spec)
    assert outcome.state == states.SUCCEEDED, outcome.reason
    run = [c for c in harness.log.chunks.values() if c.job_id == "job6"][-1]
    assert run.exit_code == 0 and "OK" in run.text  # the parent's fix was in place
    assert "+    return a + b" in outcome.diff
    assert "follows job 1" in scripted_model.requests[0]["messages"][1]["content"]


def test_only_the_job_and_its_ancestors_logs_are_citable(tmp_path, scripted_model, harness):
    repo = make_calc_repo(tmp_path / "calc")
    mine = harness.log.add_chunk(job_id="ancestor", command="ls", text="a\nb\n", exit_code=0)
    other = harness.log.add_chunk(job_id="stranger", command="ls", text="a\nb\n", exit_code=0)
    # (a job must do something before it answers: a first reply without a tool call is sent back to work)
    scripted_model.when_system_contains(AGENT, [by_turn(Reply.call("shell", command="ls"),
                                                        Reply.text(f"See 【{mine.id}†L1-L2】 and 【{other.id}†L1-L2】."))],
                                        repeat_last=True)
    outcome = harness.run(JobSpec(job_id="job7", task="look", repo=str(repo), setup=[],
                                  citable_jobs=frozenset({"ancestor"})))
    assert [(c["target"], c["valid"]) for c in outcome.citations] == [(mine.id, True), (other.id, False)]


class MemoryInbox:
    """The agent's SteerInbox port, kept in lists: what was told, delivered (note, step, how, stopped), acknowledged."""

    def __init__(self):
        self.queued: list[SteerNote] = []
        self.delivered_to: list[tuple[str, int, str, str | None]] = []
        self.acks: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def tell(self, text: str, now: bool = False) -> SteerNote:
        note = SteerNote(secrets.token_hex(4), text, now)
        with self._lock:
            self.queued.append(note)
        return note

    def take(self):
        with self._lock:
            notes, self.queued = self.queued, []
        return notes

    def delivered(self, notes, step, how, stopped=None):
        self.delivered_to += [(n.id, step, how, stopped) for n in notes]

    def acknowledged(self, notes, excerpt):
        self.acks += [(n.id, excerpt) for n in notes]


def _user_turns(request) -> list[str]:
    return [m.get("content") or "" for m in request["messages"] if m.get("role") == "user"]


def test_a_message_told_while_the_agent_works_reaches_its_next_request(tmp_path, scripted_model, harness):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("shell", command="sleep 0.5; echo looked"), Reply.call("shell", command="echo using v2"),
        lambda r: Reply.text(f"Switched to v2 【{chunk_ids(r)[-1]}†L1-L1】."))], repeat_last=True)
    inbox = MemoryInbox()
    told: list[SteerNote] = []

    def tell_during_step_one(event):
        harness.events.append(event)
        if isinstance(event, ev.ToolStarted) and event.step == 1:
            told.append(inbox.tell("Use the v2 API, not v1."))
    outcome = harness.run(JobSpec(job_id="job8", task="Look around", repo=str(repo), setup=[]),
                          emit=tell_during_step_one, steering=inbox)
    assert outcome.state == states.SUCCEEDED, outcome.reason
    first, second = scripted_model.requests[0], scripted_model.requests[1]
    assert not any("Use the v2 API" in turn for turn in _user_turns(first))
    last = second["messages"][-1]
    assert last["role"] == "user" and "The user sent a message while you work" in last["content"]
    assert "> Use the v2 API, not v1." in last["content"]
    assert second["messages"][-2]["role"] == "tool"  # it follows the step's tool result, as the protocol wants
    assert inbox.delivered_to == [(told[0].id, 2, "turn", None)]
    assert inbox.acks == [(told[0].id, "shell: $ echo using v2")]      # the next turn, quoted


def test_now_stops_the_running_command_and_the_job_goes_on(tmp_path, scripted_model, harness):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("shell", command="sleep 60"),
        lambda r: Reply.text("Stopped waiting as asked." if "stopped by the user's message" in str(r["messages"])
                             else "the command was not stopped"))], repeat_last=True)
    inbox = MemoryInbox()
    control = RunControl()

    def tell_now_once_running(event):
        harness.events.append(event)
        if isinstance(event, ev.ToolStarted):
            def tell():
                inbox.tell("Stop waiting, that sleep is pointless.", now=True)
                control.interrupt()
            threading.Timer(0.5, tell).start()
    started = time.monotonic()
    outcome = harness.run(JobSpec(job_id="job9", task="wait", repo=str(repo), setup=[]), control,
                          tell_now_once_running, steering=inbox)
    assert time.monotonic() - started < 20
    assert outcome.state == states.SUCCEEDED and outcome.summary == "Stopped waiting as asked.", outcome.reason
    tool_result = scripted_model.requests[1]["messages"][-2]
    assert tool_result["role"] == "tool" and "stopped by the user's message" in tool_result["content"]
    assert "Stop waiting" in scripted_model.requests[1]["messages"][-1]["content"]
    assert [(step, stopped) for _id, step, _how, stopped in inbox.delivered_to] == [(2, "sleep 60")]
    finished = next(e for e in harness.events if isinstance(e, ev.StepFinished))
    assert finished.title == "$ sleep 60 (stopped by the user's message)" and finished.ok is False


def test_a_steering_turn_survives_compaction_verbatim(tmp_path, scripted_model, harness, settings_for):
    repo = make_calc_repo(tmp_path / "calc")
    flood = "python3 -c \"print('\\n'.join('line %d of a long and chatty output' % i for i in range(400)))\""
    steps = [Reply.call("shell", command=f"{flood} && echo run {i}") for i in range(8)] + [Reply.text("Done looking.")]
    scripted_model.when_system_contains(AGENT, [by_turn(*steps)], repeat_last=True)
    inbox = MemoryInbox()
    long_message = "Keep the public API as it is. " * 20   # over the 400 characters compaction shrinks

    def tell_during_step_one(event):
        harness.events.append(event)
        if isinstance(event, ev.ToolStarted) and event.step == 1:
            inbox.tell(long_message)
    limits = JobLimits(context_window=6000)
    outcome = harness.run(JobSpec(job_id="job10", task="look around", repo=str(repo), setup=[]),
                          emit=tell_during_step_one, steering=inbox, limits=limits)
    assert outcome.state == states.SUCCEEDED, outcome.reason
    assert any(isinstance(e, ev.AgentMessage) and "Compacted" in e.text for e in harness.events)
    last = scripted_model.requests[-1]["messages"]
    assert any((m.get("content") or "").startswith("[compacted") for m in last)
    steering = [m for m in last if "The user sent a message while you work" in (m.get("content") or "")]
    assert len(steering) == 1 and long_message.strip() in steering[0]["content"]
    assert last.index(steering[0]) < len(last) - 6   # old enough to have been compacted, and kept


def test_the_pipeline_imports_no_store_and_no_web_code():
    source = (Path(__file__).parents[2] / "assistant" / "jobs" / "pipeline.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in imports if "store" in line or "web" in line or "chainlit" in line], imports


def _fixed_copy(repo: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "fixed"
    subprocess.run(["git", "clone", "-q", str(repo), str(copy)], check=True)
    calc = copy / "calc.py"
    calc.write_text(calc.read_text().replace("return a - b", "return a + b"))
    return copy
