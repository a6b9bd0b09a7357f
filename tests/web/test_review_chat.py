"""A review started from the chat, over the app's socket as a browser speaks it (no browser): "review the branch
feature against main" on a small repository whose branch has an off-by-one yields a review card with the verdict and
a verified blocker (its proof run by the product on head and base), the proof tests download, and "Fix this" starts
the follow-up job whose card appears and ends fixed. A branch that does not exist is refused with what to do. The
sandbox is the local (bubblewrap) backend, the reviewer and the fixer the scripted model (tests/fixtures/chunks.py)."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from assistant.testing.scripted_model import ScriptedModelServer
from tests.fixtures.chunks import AGENT_FIX, CHUNKS_BUGGY, REVIEWER, bug_findings, make_chunks_repo, reviewer

from . import scripts
from .harness import USERS, AppProcess, SocketClient, http, password_login

pytestmark = [pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bubblewrap for the local sandbox"),
              pytest.mark.timeout(900)]


@pytest.fixture
def app():
    # The local backend runs as an unprivileged user, which must reach the data directory: pytest's are private.
    tmp_path = Path(tempfile.mkdtemp(prefix="review-chat-test-"))
    tmp_path.chmod(0o711)
    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_BUGGY)
    model = ScriptedModelServer().start()
    model.when_system_contains(REVIEWER, [reviewer(bug_findings)], repeat_last=True)
    model.when_system_contains(scripts.AGENT, [AGENT_FIX], repeat_last=True)
    (tmp_path / "data").mkdir()
    process = AppProcess(tmp_path / "data", model.base_url, repo, tmp_path / "app.log",
                         ASSISTANT_SANDBOX_BACKEND="local", ASSISTANT_REPO_ROOTS=str(tmp_path)).start()
    yield process, model
    process.stop()
    model.stop()
    shutil.rmtree(tmp_path, ignore_errors=True)


def messages(events) -> list[dict]:
    return [data for event, data in events if event in ("new_message", "update_message") and isinstance(data, dict)]


def has(client: SocketClient, *needles: str, timeout: float = 240) -> dict:
    """The latest message holding all the needles in its text, once one arrives."""
    found: list[dict] = []

    def check(events) -> bool:
        found[:] = [m for m in messages(events) if all(n in str(m.get("output") or "") for n in needles)]
        return bool(found)
    assert client.wait_for(check, timeout), \
        f"no message with {needles}; got: {[str(m.get('output'))[:300] for m in messages(client.events)][-4:]}"
    return found[-1]


def actions_for(client: SocketClient, job_id: str, events: list | None = None) -> dict[str, dict]:
    if events is None:
        with client._lock:
            events = list(client.events)
    return {data["name"]: data for event, data in events
            if event == "action" and isinstance(data, dict) and (data.get("payload") or {}).get("job_id") == job_id}


def test_a_review_from_the_chat_shows_a_verified_blocker_and_fix_this_starts_the_follow_up(app):
    process, model = app
    _, token, _ = password_login(process.url, "alice", USERS["alice"])
    client = SocketClient(process.url, token)
    assert client.connect(), client.error
    try:
        client.send("review the branch fix-logn against main")
        refused = has(client, "Could not start the review", timeout=60)["output"]
        assert "'fix-logn' does not exist" in refused and "branches: feature, main" in refused
        assert "Nothing was started" in refused and "/review --base main BRANCH" in refused

        client.send("review the branch feature against main")
        has(client, "### Job 1 · Review feature against main", "Started as a review", timeout=60)
        card = has(client, "### Job 1", "## Verdict: ✗ Changes requested")
        job_id = card["metadata"]["job_id"]
        text = card["output"]
        assert "**f1 · chunked drops the last item of an odd-length list** — ✔ **verified**" in text
        assert "head: exit 1 ✖ fails" in text and "base: exit 0 ✔ passes" in text
        assert "range(0, len(items) - 1, size)" in text                        # the checked excerpt
        assert "**f2 · chunked is slow on huge lists** — ⚠ *unverified — no proof was given*" in text
        assert "*(citation not checked: " in text                              # f2's lines past the file's end
        assert "⚠ *unverified — its proof passes on the head*" in text         # the nit
        assert "review: proof of f1 on the head → exit 1" in text              # its progress stays on the card
        # The card's buttons come one by one; "Review again" (Retry) is sent last.
        assert client.wait_for(lambda events: actions_for(client, job_id, events).get("retry_job", {}).get("label")
                               == "Review again", 30), \
            [(e, d.get("name")) for e, d in client.events if e in ("action", "remove_action") and isinstance(d, dict)]
        buttons = actions_for(client, job_id)
        assert buttons["fix_finding_0"]["label"] == "Fix this: f1 (verified blocker)"
        assert buttons["fix_finding_0"]["payload"] == {"job_id": job_id, "finding": "f1"}
        assert buttons["fix_blockers"]["label"] == "Fix all blockers (1)" and "apply_proofs" in buttons

        status, _, proofs = http("GET", f"{process.url}/jobs/{job_id}/proofs?finding=f1", token=token)
        assert status == 200 and b"+++ b/test_review_proof.py" in proofs
        _, bob, _ = password_login(process.url, "bob", USERS["bob"])
        assert http("GET", f"{process.url}/jobs/{job_id}/proofs", token=bob)[0] == 404   # not bob's review

        status, body = client.action("fix_finding_0", {"job_id": job_id, "finding": "f1"})
        assert status == 200, body
        follow = has(client, "### Job 2 · Fix: chunked drops the last item", "Fix this: finding f1 of review job 1",
                     timeout=60)
        assert "Starts from the result of job 1" in follow["output"]
        done = has(client, "### Job 2", "✓ succeeded")["output"]
        assert "Fixed the range" in done and "chunks.py" in done
        fixer = [r for r in model.requests if scripts.AGENT in r["messages"][0]["content"]]
        assert "python3 -m unittest -v test_review_proof" in json.dumps(fixer[0]["messages"])
    finally:
        client.close()
