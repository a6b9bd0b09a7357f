"""A job's branch: its name from the title, and a commit message that is clean prose with a short subject."""
from __future__ import annotations

import subprocess

from assistant.web import gitops

from .harness import make_repo
from .test_auth_and_git import PATCH  # the mul function added to the harness's calc repository


SUMMARY = ("Added `mul` 【F:calc.py†L11-L12】 next to `sub` 【F:calc.py†L8】. The tests pass 【3fa9c1†L1-L4】.\n\n"
           "From the log:\n- The last test run, `python3 -m pytest -q`, passed 【chunk†L1-L2】")


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def test_the_commit_message_has_a_short_subject_and_no_citation_tokens(tmp_path):
    repo = make_repo(tmp_path / "repo")
    base = git(repo, "rev-parse", "HEAD").strip()
    title = "Add a mul function to the calculator, next to sub, and make sure every test still passes afterwards"
    message = gitops.commit_message_for(title, SUMMARY)
    gitops.create_branch(repo, PATCH, base_commit=base, branch=gitops.branch_name_for(1, title), message=message)
    stored = git(repo, "log", "-1", "--format=%B", "assistant/job-1-add-a-mul-function-to-the-calculator")
    subject, blank, *body = stored.strip().splitlines()
    assert subject == "Add a mul function to the calculator, next to sub, and make sure every…"
    assert len(subject) <= 72 and blank == ""
    assert "【" not in stored and "】" not in stored and "†" not in stored
    assert "\n".join(body) == ("Added `mul` (calc.py:11-12) next to `sub` (calc.py:8). The tests pass.\n\n"
                               "From the log:\n- The last test run, `python3 -m pytest -q`, passed")


def test_a_title_with_citations_or_several_lines_gives_a_one_line_subject():
    message = gitops.commit_message_for("Fix add 【F:calc.py†L4-L5】\nmore words", None)
    assert message == "Fix add (calc.py:4-5)"
    assert gitops.commit_message_for("", "") == "Change made by the assistant"


def test_branch_names_come_from_the_title_cut_at_a_word():
    assert gitops.branch_name_for(1, "Add a mul function!") == "assistant/job-1-add-a-mul-function"
    name = gitops.branch_name_for(7, "Handle None in merge_configs: also add a test for the None case, please")
    assert name == "assistant/job-7-handle-none-in-merge-configs-also-add-a"
    assert len(name.split("job-7-", 1)[1]) <= gitops.BRANCH_SLUG_CHARS
    assert gitops.branch_name_for(2, "Fix 【F:a.py†L1】\nsecond line") == "assistant/job-2-fix-a-py-1"
    assert gitops.branch_name_for(3, "!!!") == "assistant/job-3-change"
