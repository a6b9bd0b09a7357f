"""The agent's ask_user tool (agent/asking.py, agent/loop.py): the question goes to the asker, the answer comes back
as the tool result, the time spent waiting is not the job's; the scripted model over HTTP, a fake sandbox."""
from __future__ import annotations

import time

import pytest

from assistant.agent.asking import ASK_USER, Question, Reply, parse_question, unanswered_reason
from assistant.agent.loop import Agent, AgentBudgets
from assistant.agent.tools import ToolEnv
from assistant.llm.client import ModelClient
from assistant.store import Store
from assistant.testing.scripted_model import Reply as ModelReply
from assistant.testing.scripted_model import by_turn
from tests.jobs.fake_sandbox import FakeSandbox

AGENT = "You are a careful software engineer"


class SleepyAsker:
    """Answers after `sleep_s`, reporting the wait as `reported_s` (the real wait unless told otherwise)."""

    def __init__(self, answer: str | None, sleep_s: float = 0.0, reported_s: float | None = None, ended: str = ""):
        self.answer, self.sleep_s, self.reported_s, self.ended = answer, sleep_s, reported_s, ended
        self.questions: list[Question] = []
        self.cancel = None   # set: the job is cancelled while it waits

    def ask(self, question: Question) -> Reply:
        self.questions.append(question)
        if self.cancel is not None:
            self.cancel.set()   # as RunControl.cancel does while the asker waits
        started = time.monotonic()
        time.sleep(self.sleep_s)
        waited = time.monotonic() - started if self.reported_s is None else self.reported_s
        return Reply(self.answer, waited, self.ended, timeout_s=5)


@pytest.fixture
def agent_for(settings_for, scripted_model, tmp_path):
    stores, sandboxes = [], []

    def make(asker, **budgets):
        settings = settings_for(scripted_model)
        store = Store(settings.resolved_database_url)
        stores.append(store)
        job = store.create_job(task="x", repo="/src/calc")
        sandbox = FakeSandbox.start(job_id=job.id)
        sandboxes.append(sandbox)
        env = ToolEnv(sandbox, store, job.id, command_timeout_s=30)
        return Agent(ModelClient(settings), env, budgets=AgentBudgets(**budgets), protocol="native", job_id=job.id,
                     asker=asker)
    yield make
    for sandbox in sandboxes:
        sandbox.close()
    for store in stores:
        store.close()


def script(scripted_model, question_args: dict):
    scripted_model.when_system_contains(AGENT, [by_turn(
        ModelReply.call("shell", command="echo before"),
        ModelReply.call(ASK_USER, **question_args),
        lambda r: ModelReply.call("shell", command="echo after " + ("answered" if "Use v2." in r["messages"][-1]
                                                                   .get("content", "") else "unanswered")),
        ModelReply.text("Done as you said."))], repeat_last=True)


def test_the_answer_is_the_tool_result_and_the_wait_does_not_count_against_the_time_budget(agent_for,
                                                                                          scripted_model):
    script(scripted_model, {"question": "v1 or v2?", "choices": ["v1", "v2"]})
    asker = SleepyAsker("Use v2.", sleep_s=4)
    result = agent_for(asker, max_seconds=3).run("Fix it")   # the agent's own work takes well under 3 s
    assert result.status == "succeeded", result.reason
    assert asker.questions == [Question("v1 or v2?", ("v1", "v2"), 2)]
    last = scripted_model.requests[2]["messages"][-1]
    assert last["role"] == "tool" and "> Use v2." in last["content"]
    assert "echo after answered" in str(scripted_model.requests[3]["messages"])


def test_a_wait_that_counted_would_exhaust_the_same_budget(agent_for, scripted_model):
    """The control of the test above: the same run, with the wait reported as none, runs out of time."""
    script(scripted_model, {"question": "v1 or v2?"})
    result = agent_for(SleepyAsker("Use v2.", sleep_s=4, reported_s=0.0), max_seconds=3).run("Fix it")
    assert result.status == "failed" and "time budget exhausted" in result.reason


def test_no_answer_ends_the_run_with_the_question_in_its_reason(agent_for, scripted_model):
    script(scripted_model, {"question": "Which database should the tests use?"})
    result = agent_for(SleepyAsker(None, reported_s=1800.0, ended="timeout")).run("Fix it")
    assert result.status == "failed" and result.summary == ""
    assert "Which database should the tests use?" in result.reason and "did not come" in result.reason
    assert len(scripted_model.requests) == 2            # no model call after the unanswered question


def test_a_cancel_while_waiting_ends_the_run_cancelled(agent_for, scripted_model):
    script(scripted_model, {"question": "v1 or v2?"})
    asker = SleepyAsker(None, ended="cancelled")
    agent = agent_for(asker)
    asker.cancel = agent.cancel
    result = agent.run("Fix it")
    assert result.status == "cancelled" and result.reason == "cancelled by the user"
    assert len(asker.questions) == 1 and len(scripted_model.requests) == 2


def test_a_malformed_question_is_sent_back_and_without_an_asker_there_is_no_such_tool(agent_for, scripted_model):
    script(scripted_model, {"question": "  "})
    asker = SleepyAsker("unused")
    agent_for(asker).run("Fix it")
    assert asker.questions == []
    assert "error: malformed call to ask_user: `question` must be a non-empty string" in str(
        scripted_model.requests[2]["messages"])
    scripted_model.reset()
    script(scripted_model, {"question": "v1 or v2?"})
    agent_for(None).run("Fix it")
    assert [t["function"]["name"] for t in scripted_model.requests[0]["tools"]] == ["shell", "apply_patch"]
    assert "there is no tool 'ask_user'" in str(scripted_model.requests[2]["messages"])


def test_questions_are_checked_and_an_unanswered_one_says_what_to_do():
    assert parse_question({"question": " Which? ", "choices": ["a", " b "]}, 3) == Question("Which?", ("a", "b"), 3)
    for bad, said in (({}, "non-empty string"), ({"question": "q", "choices": "a"}, "list of non-empty"),
                      ({"question": "q", "choices": [""]}, "list of non-empty"),
                      ({"question": "q", "why": "x"}, "unknown argument"),
                      ({"question": "q" * 2001}, "at most 2000")):
        with pytest.raises(ValueError, match=said):
            parse_question(bad)
    reason = unanswered_reason(Question("Which?"), Reply(None, 1800.0, "timeout", timeout_s=1800))
    assert "waited 30 min" in reason and "did not come" in reason and "Retry" in reason
