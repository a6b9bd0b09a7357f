"""`assistant review --json` on a real project on the Docker engine: cachetools from its PyPI source distribution
(downloaded here), with a branch that brings a real off-by-one its own tests miss (TTLCache's iterator yields an
entry at the instant it expires, which `in` already denies) and a branch with a harmless refactor.

The reviewer is scripted; what the test checks is the product's part: the proof test runs on the head and on
the base in the sandbox, the blocker is verified only because it fails on one and passes on the other, an
invented finding stays unverified, citations are checked, and the refactor is approved.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from assistant.testing.scripted_model import Reply, by_turn, chunk_ids
from tests.e2e.projects import GIT_DATES, PROJECTS, Site, download_sdist, replace_once

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

REVIEWER = "You are a careful code reviewer"
CACHETOOLS = next(p for p in PROJECTS if p.name == "cachetools")
MODULE = "src/cachetools/__init__.py"
SETUP = "python3 -m venv .venv && .venv/bin/pip install -q pytest"
TESTS = "PYTHONPATH=src .venv/bin/python -m pytest -q -p no:cacheprovider tests"
GOOD = "            with self.timer as time:\n                if time < curr.expires:\n                    yield curr.key"
# The bug: an entry whose time is up is still listed (the others already treat it as gone).
BUGGY = "            with self.timer as time:\n                if time <= curr.expires:\n                    yield curr.key"
REFACTOR = ("            with self.timer as now:\n                if curr.expires > now:\n"
            "                    yield curr.key")
PROOF_PATH = "test_review_proof.py"
PROOF_TEST = ("from cachetools import TTLCache\n\n\n"
              "def test_an_entry_that_just_expired_is_not_listed():\n"
              "    now = [0]\n    cache = TTLCache(maxsize=10, ttl=1, timer=lambda: now[0])\n"
              "    cache['a'] = 1\n    now[0] = 1\n"
              "    assert 'a' not in cache\n    assert [key for key in cache] == []\n")
PROOF_CMD = f"PYTHONPATH=src .venv/bin/python -m pytest -q -p no:cacheprovider {PROOF_PATH} 2>&1"


def git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_DATES}, check=True, capture_output=True)


def make_repo(root):
    """The release on main (with an AGENTS.md naming its tests), and two branches off it."""
    repo = download_sdist(CACHETOOLS, root / "sdist")
    (repo / "AGENTS.md").write_text(f"Run the tests with `{TESTS}`.\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "cachetools 5.5.0")
    for branch, text in (("feature", BUGGY), ("refactor", REFACTOR)):
        git(repo, "checkout", "-q", "-b", branch, "main")
        replace_once(repo, Site(MODULE, GOOD, text), GOOD, text)
        git(repo, "commit", "-q", "-am", f"TTLCache: {branch}")
    git(repo, "checkout", "-q", "main")
    return repo


def cli(args, env, timeout=1200):
    return subprocess.run([sys.executable, "-m", "assistant.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def cli_env(data_dir, model) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTANT_", "OPENAI_"))}
    env.update(ASSISTANT_DATA_DIR=str(data_dir), OPENAI_BASE_URL=model.base_url, OPENAI_API_KEY="k",
               ASSISTANT_MODEL="scripted-model", ASSISTANT_SANDBOX_BACKEND="docker",
               ASSISTANT_CONFIG=str(data_dir / "none.toml"), NO_PROXY="127.0.0.1,localhost")
    return env


def reviewer(findings, verdict):
    def report(request):
        items = findings(chunk_ids(request)) if callable(findings) else findings
        return Reply.text("```json\n" + json.dumps({"verdict": verdict, "summary": "Reviewed.",
                                                    "findings": items}) + "\n```")
    return by_turn(Reply.call("shell", command="git diff HEAD~1 --stat 2>&1"), report)


def test_an_off_by_one_branch_gets_a_verified_blocker_and_a_refactor_is_approved(tmp_path, docker_engine,
                                                                                 scripted_model):
    repo = make_repo(tmp_path)
    line = (repo / MODULE).read_text().splitlines().index("                if time < curr.expires:") + 1
    env = cli_env(tmp_path / "data", scripted_model)

    def bug_findings(ids):
        return [{"title": "TTLCache lists an entry at the instant it expires", "severity": "blocker",
                 "body": f"`<=` keeps an expired entry in iteration while `in` drops it; the diff "
                         f"【{ids[-1]}†L1-L2】.", "path": MODULE, "start_line": line, "end_line": line,
                 "proof_command": PROOF_CMD, "proof_test_path": PROOF_PATH, "proof_test": PROOF_TEST},
                {"title": "The cache leaks memory under load", "severity": "major",
                 "body": "Entries are never freed 【F:src/cachetools/__init__.py†L9000-L9001】."}]
    scripted_model.when_system_contains(REVIEWER, [reviewer(bug_findings, "changes_requested")], repeat_last=True)
    proc = cli(["review", "--repo", str(repo), "--base", "main", "--head", "feature", "--setup", SETUP, "--json"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["status"] == "succeeded" and out["verdict"] == "changes_requested", out["summary"]
    blocker, invented = out["findings"]
    # The proof test the product ran fails on the branch and passes on main: verified.
    assert blocker["verified"] and blocker["proof"]["status"] == "confirmed", blocker["proof"]
    assert blocker["proof"]["head"]["exit_code"] != 0 and blocker["proof"]["base"]["exit_code"] == 0
    assert [c["valid"] for c in blocker["citations"]] == [True, True]
    assert "time <= curr.expires" in blocker["citations"][1]["excerpt"]
    # The repository's own tests pass on both sides: they miss the bug.
    assert [(t["side"], t["exit_code"]) for t in out["tests"]] == [("base", 0), ("head", 0)], out["tests"]
    # The invented finding has no proof: unverified, and its citation past the file's end is invalid.
    assert not invented["verified"] and invented["proof"] is None
    assert [c["valid"] for c in invented["citations"]] == [False]
    (proof,) = out["proof_patches"]
    assert proof["path"] == PROOF_PATH and f"+++ b/{PROOF_PATH}" in proof["patch"]
    head_log = cli(["jobs", "logs", out["job_id"], "--chunk", blocker["proof"]["head"]["chunk_id"]], env, timeout=120)
    assert "1 failed" in head_log.stdout

    scripted_model.reset()
    scripted_model.when_system_contains(REVIEWER, [reviewer([], "approve")], repeat_last=True)
    proc = cli(["review", "--repo", str(repo), "--base", "main", "--head", "refactor", "--setup", SETUP, "--json"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["verdict"] == "approve" and not any(f["severity"] == "blocker" for f in out["findings"])
    assert [(t["side"], t["exit_code"]) for t in out["tests"]] == [("base", 0), ("head", 0)], out["tests"]
