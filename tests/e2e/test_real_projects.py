"""Real projects, real bugs, real test runs: `assistant run --json` on the Docker engine decides the kind of
result, checks the summary's claims and flags the diff, and each must come out right.

Six small pure-Python projects from their PyPI source distributions (downloaded here, made git repositories
with a bug committed). A scripted agent reproduces the failure, edits and re-runs the tests, in variants:
a real fix, a half fix whose summary still says "all tests pass", an edit of the test instead of the code,
and a fix whose summary claims passing tests it never re-ran. Four projects get a setup that creates
`.venv` inside the workspace; three of those do not ignore it in their .gitignore.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from assistant.testing.scripted_model import Reply, by_turn
from tests.e2e.projects import PROJECTS, apply_patch_text, cited_lines, download_sdist, make_buggy_repo, variant_edits

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

AGENT = "You are a careful software engineer"
CASES = [(project, variant) for project in PROJECTS for variant in project.variants]


@pytest.fixture(scope="session")
def project_repos(tmp_path_factory, docker_engine):
    """Each project downloaded and made a buggy repository once; its variants share it and one data dir,
    so every run after the first is a setup-cache hit."""
    made = {}

    def get(project):
        if project.name not in made:
            root = tmp_path_factory.mktemp(project.name)
            repo = make_buggy_repo(project, download_sdist(project, root / "sdist"))
            made[project.name] = (repo, root / "data")
        return made[project.name]
    return get


def tool_runs(request: dict) -> list[tuple[str, int]]:
    """(chunk id, line count) of each tool result the agent has seen, oldest first."""
    runs = []
    for message in request.get("messages", []):
        if message.get("role") == "tool":
            match = re.search(r"chunk ([0-9a-f]{6}) · (\d+) lines?", message.get("content") or "")
            if match:
                runs.append((match[1], int(match[2])))
    return runs


def scripted_agent(project, repo, variant):
    edits = variant_edits(project, variant)
    path, first, last = cited_lines(repo, edits)
    code = f"【F:{path}†L{first}-L{last}】"

    def summary(request: dict) -> Reply:
        (before, before_lines), *_rest = tool_runs(request)
        after, after_lines = tool_runs(request)[-1]
        text = {
            "fix": (f"The bug was in `{path}` {code}. The tests failed before the change 【{before}†L1-L{before_lines}】 "
                    f"and all tests pass after it 【{after}†L1-L{after_lines}】."),
            "half": f"Fixed the bug in `{path}` {code}. All tests pass 【{after}†L1-L{after_lines}】.",
            "edit_test": (f"The expectation in `{path}` was out of date, so I updated the test {code}. "
                          f"All tests pass now 【{after}†L1-L{after_lines}】."),
            "unverified": f"Fixed the bug in `{path}` {code}. All tests pass now.",
        }[variant]
        return Reply.text(text)

    steps = [Reply.call("shell", command=project.test), Reply.call("apply_patch", patch=apply_patch_text(repo, edits))]
    if variant != "unverified":
        steps.append(Reply.call("shell", command=project.test))
    return by_turn(*steps, summary)


def cli(args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "assistant.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def cli_env(data_dir, model) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTANT_", "OPENAI_"))}
    env.update(ASSISTANT_DATA_DIR=str(data_dir), OPENAI_BASE_URL=model.base_url, OPENAI_API_KEY="k",
               ASSISTANT_MODEL="scripted-model", ASSISTANT_SANDBOX_BACKEND="docker",
               ASSISTANT_CONFIG=str(data_dir / "none.toml"), NO_PROXY="127.0.0.1,localhost")
    return env


def is_venv(path: str) -> bool:
    return path == ".venv" or path.startswith(".venv/")


@pytest.mark.parametrize("project,variant", CASES, ids=[f"{p.name}-{v}" for p, v in CASES])
def test_outcome_claims_and_flags_come_out_right(project, variant, project_repos, scripted_model):
    repo, data_dir = project_repos(project)
    scripted_model.when_system_contains(AGENT, [scripted_agent(project, repo, variant)], repeat_last=True)
    env = cli_env(data_dir, scripted_model)
    setup = [arg for command in project.setup for arg in ("--setup", command)] or ["--setup", ""]
    proc = cli(["run", "--repo", str(repo), *setup, "--json", f"Fix the failing tests of {project.name}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    outcome = out["outcome"]
    runs = [e for e in outcome["evidence"]]
    changed = {path for _status, path in outcome["files"]}
    edited = {site.path for site, _old, _new in variant_edits(project, variant)}

    # The diff holds the agent's edits (the setup's .venv is judged last, below).
    assert {p for p in changed if not is_venv(p)} == edited, outcome["files"]
    assert all(c["valid"] for c in out["citations"]), out["citations"]
    assert out["usage"]["prompt_tokens"] > 0 and out["usage"]["models"][0]["model"] == "scripted-model"

    # The kind of result, from the log: the last run of the test command, its chunk and exit code.
    last = runs[-1]
    assert last["command"] == project.test
    if variant == "fix":
        assert outcome["kind"] == "fix", outcome["kind_reason"]
        assert (last["exit_code"], last["after_last_edit"]) == (0, True)
    elif variant == "half":
        assert outcome["kind"] == "draft" and "after the last edit" in outcome["kind_reason"]
        assert last["exit_code"] != 0 and last["after_last_edit"] is True
    elif variant == "edit_test":
        assert outcome["kind"] == "draft" and "tests themselves were changed" in outcome["kind_reason"]
        assert (last["exit_code"], last["after_last_edit"]) == (0, True)
    else:
        assert outcome["kind"] == "draft" and "not run after the last edit" in outcome["kind_reason"]
        assert last["exit_code"] != 0 and last["after_last_edit"] is False

    # Claims: "all tests pass" holds only where the cited run passed after the last edit.
    claims = outcome["claims"]
    assert claims, out["summary"]
    if variant in ("fix", "edit_test"):
        assert all(c["supported"] for c in claims), claims
    else:
        [bad] = [c for c in claims if not c["supported"]]
        assert "All tests pass" in bad["sentence"]
        expected = f"(chunk {last['chunk_id']}) exited" if variant == "half" else "it cites no log output"
        assert expected in bad["reason"], bad

    # Review flags: only the test edit is flagged, naming the test file.
    flags = [(f["kind"], f["path"]) for f in outcome["flags"] if not is_venv(f["path"])]
    if variant == "edit_test":
        assert flags == [(project.test_edit_flag, project.test_edit[0].path)], outcome["flags"]
    else:
        assert flags == [], outcome["flags"]

    if variant == "half":  # what a reviewer reads in the terminal
        show = cli(["jobs", "show", out["job_id"]], env, timeout=120)
        assert f"result: draft — `{project.test}` exited" in show.stdout
        assert "[⚠ not supported by the log: the cited run" in show.stdout
        # a job of `run` belongs to no conversation: no number, no conversation in the list
        assert re.search(rf"{out['job_id']}\s+-\s+-\s+succeeded\s+draft", cli(["jobs", "list"], env, timeout=120).stdout)

    # The setup's .venv is no part of the agent's change, even where .gitignore does not ignore it.
    assert not any(is_venv(p) for p in changed) and not any(is_venv(f["path"]) for f in outcome["flags"])
