"""What the scripted model says in the browser tests: a router, an answerer and an agent per task keyword.

Replies are functions of the request, so several jobs can run at once against one server: each
agent request is answered from its own task text and the number of tool results it already holds.
"""
from __future__ import annotations

import json

from assistant.testing.scripted_model import Reply, ScriptedModelServer, chunk_ids

ROUTER = "You route messages"
ANSWERER = "You answer questions about a codebase"
AGENT = "You are a careful software engineer"

MUL_PATCH = """*** Begin Patch
*** Update File: calc.py
@@
 def sub(a, b):
     return a - b
+
+
+def mul(a, b):
+    return a * b
*** End Patch"""

# A link the model makes up: it must reach the page as plain text, never as a link or a citation.
INVENTED_LINK = "https://github.com/example/demo/blob/main/demo_repo.py#L47"

SQUARES_LINES = 450  # more than a card shows of one file, so the DiffView truncates it and starts it folded

DIV_PATCH = ("*** Begin Patch\n*** Add File: div.py\n+def div(a, b):\n+    return a / b\n"
             "*** Add File: squares.py\n" + "".join(f"+SQUARE_{i} = {i * i}\n" for i in range(SQUARES_LINES))
             + "*** End Patch")

TEST_PATCH = """*** Begin Patch
*** Add File: test_mul.py
+from calc import mul
+
+
+def test_mul():
+    assert mul(3, 4) == 12
*** End Patch"""


def _task(request: dict) -> str:
    for message in request.get("messages", []):
        if message.get("role") == "user":
            return message.get("content") or ""
    return ""


def _tool_results(request: dict) -> int:
    return sum(1 for m in request.get("messages", []) if m.get("role") == "tool")


def _last_user(request: dict) -> str:
    users = [m.get("content") or "" for m in request.get("messages", []) if m.get("role") == "user"]
    return users[-1] if users else ""


def route(request: dict) -> Reply:
    text = _last_user(request).lower()
    if "why" in text:
        decision = {"route": "answer", "followup": True, "job": "last", "reason": "asks about the last job"}
    elif text.startswith(("add", "create", "implement", "slowly", "also")):
        decision = {"route": "job", "followup": text.startswith("also"), "job": "last" if text.startswith("also") else None,
                    "reason": "asks for a change"}
    else:
        decision = {"route": "answer", "followup": False, "job": None, "reason": "a question about the code"}
    return Reply.text(json.dumps(decision))


def answer(request: dict) -> Reply:
    if _tool_results(request) == 0:
        return Reply.call("read_file", path="calc.py")
    if "why" in _last_user(request).lower():
        return Reply.text("Because the task asked for multiplication, job 1 added `mul` next to `sub` "
                          f"【F:calc.py†L12-L13】, as upstream does in [demo_repo.py#L47]({INVENTED_LINK}).",
                          chunk_delay_s=0.03)
    return Reply.text("`add` is defined in calc.py 【F:calc.py†L4-L5】 and returns the sum of its two arguments.",
                      chunk_delay_s=0.05)


def agent(request: dict) -> Reply:
    task = _task(request).lower()
    step = _tool_results(request)
    if "many small steps" in task:  # more steps than a card lists before folding the earlier ones
        plan = [Reply.call("shell", command=f"echo small step {n}") for n in range(1, 15)]
    elif "slowly" in task:  # holds the job in `running` until the server dies or it is cancelled
        plan = [Reply.call("shell", command="for i in $(seq 1 300); do echo tick $i; sleep 1; done")]
    elif "division" in task:
        plan = [Reply.call("shell", command="sleep 4; printf '\\000\\001binary' > blob.bin; echo checked division"),
                Reply.call("apply_patch", patch=DIV_PATCH)]
    elif "test" in task:
        plan = [Reply.call("apply_patch", patch=TEST_PATCH),
                Reply.call("shell", command="sleep 3; python3 -c 'from calc import mul; assert mul(3, 4) == 12; print(\"ok\")'")]
    else:
        plan = [Reply.call("shell", command="for i in 1 2 3; do echo probing $i; sleep 1; done; python3 -c 'import calc; print(calc.add(2, 3))'"),
                Reply.call("apply_patch", patch=MUL_PATCH)]
    if step < len(plan):
        return plan[step]
    ids = chunk_ids(request)
    cited = f" The check printed its result 【{ids[0]}†L1-L1】." if ids else ""
    if "division" in task:
        return Reply.text(f"Added `div` in a new module 【F:div.py†L1-L2】.{cited}")
    if "test" in task:
        return Reply.text(f"Added a test for `mul` 【F:test_mul.py†L4-L5】.{cited}")
    return Reply.text(f"Added `mul` to calc.py 【F:calc.py†L12-L13】.{cited}")


def install(server: ScriptedModelServer) -> ScriptedModelServer:
    server.reset()
    server.when_system_contains(ROUTER, [route], repeat_last=True)
    server.when_system_contains(ANSWERER, [answer], repeat_last=True)
    server.when_system_contains(AGENT, [agent], repeat_last=True)
    return server
