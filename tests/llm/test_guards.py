"""The output guards: echoes of the prompt, loops and degenerate text are caught; ordinary answers pass."""
from assistant.llm.guards import Instructions, StreamGuard, find_problem
from assistant.prompts import load_prompt

ANSWER_PROMPTS = Instructions.from_prompts("answer_system.md", "answer_excerpts_system.md", "answer_excerpts_task.md")
SUMMARY_PROMPTS = Instructions.from_prompts("failure_summary.md", "failure_summary_task.md")

GOOD = """`add` returns `a - b` 【F:calc.py†L1-L2】, so `add(2, 3)` gives -1 instead of 5.

The test `test_add` expects 5 【F:test_calc.py†L4-L5】:

```python
def add(a, b):
    return a - b
```

Fix: change the operator to `+`. Run it as a job if you want the change made."""

CJK_GOOD = "`add` 函数返回 a - b 【F:calc.py†L1-L2】，这是错误的。"


def test_ordinary_answers_pass():
    assert find_problem(GOOD, ANSWER_PROMPTS, conversation="What does add do?") is None
    table = "| a | b |\n|---|---|\n| 1 | 2 |\n\n" + "-" * 60 + "\nok"
    assert find_problem(table, ANSWER_PROMPTS) is None
    assert find_problem(CJK_GOOD, ANSWER_PROMPTS, conversation="add 函数做什么？") is None
    code = "```python\n" + "\n".join(f"    assert add({i}, {i}) == {2 * i}" for i in range(12)) + "\n```"
    assert find_problem(code, ANSWER_PROMPTS) is None


def test_an_echo_of_the_system_prompt_is_caught():
    system = load_prompt("answer_system.md")
    assert find_problem(system, ANSWER_PROMPTS) == "the reply recited its instructions"
    tail = "Sure! " + " ".join(load_prompt("failure_summary.md").split()[20:40]) + " and then it stopped."
    assert find_problem(tail, SUMMARY_PROMPTS) == "the reply recited its instructions"
    # One line of the prompt, verbatim, is enough.
    assert find_problem("Hello.\nWrite at most six short bullet points, plain and factual:\n- x", SUMMARY_PROMPTS)


def test_repetition_is_caught():
    paragraph = "The add function adds two numbers and returns the result to the caller."
    assert find_problem("\n\n".join([paragraph] * 5)) == "the reply repeats itself"
    assert find_problem(f"{paragraph}\n\n{paragraph}") == "the reply repeats itself"
    sentences = " ".join(["It returns the difference of its two arguments instead of their sum."] * 2)
    assert find_problem(sentences) == "the reply repeats itself"
    loop = "```\n" + "result = add(result, 1)  # increment\n" * 6 + "```"
    assert find_problem(loop) == "the reply repeats itself"


def test_degenerate_text_is_caught():
    assert find_problem("The answer is " + "a" * 40) == "the reply degenerated into a run of 'a'"
    assert find_problem("It is " + "\ufffd\ufffd\ufffd" + " broken") == "the reply contains unreadable characters"
    assert find_problem("`add` 返回" + "的" * 3 + "一二三四五六七八九十" * 3, conversation="What does add do?") \
        == "the reply slid into another script"
    assert find_problem("   \n ") == "the reply was empty"


def test_the_stream_guard_releases_checked_lines_and_stops_at_the_first_repeat():
    paragraph = "The add function adds two numbers and returns the result to the caller.\n\n"
    guard = StreamGuard(ANSWER_PROMPTS, conversation="What does add do?")
    shown = ""
    for piece in (paragraph * 5)[::1]:
        shown += guard.feed(piece)
        if guard.problem:
            break
    assert guard.problem == "the reply repeats itself"
    assert shown.count("The add function") == 1
    assert guard.finish() == "" and guard.shown == shown


def test_the_stream_guard_shows_nothing_of_an_echo():
    guard = StreamGuard(ANSWER_PROMPTS)
    shown = "".join(guard.feed(load_prompt("answer_system.md")[i:i + 7])
                    for i in range(0, len(load_prompt("answer_system.md")), 7))
    assert shown == "" and guard.problem == "the reply recited its instructions"


def test_the_stream_guard_passes_a_good_answer_whole():
    guard = StreamGuard(ANSWER_PROMPTS, conversation="What does add do?")
    shown = "".join(guard.feed(GOOD[i:i + 5]) for i in range(0, len(GOOD), 5))
    assert shown and GOOD.startswith(shown)
    assert shown + guard.finish() == GOOD and guard.problem is None
