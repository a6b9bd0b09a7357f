"""The trust boundary: whatever setup or the agent writes into the workspace, nothing of it runs or is written on
the host — not when the diff is taken, not when a follow-up applies the parent's patch, not when the setup
cache snapshots the container, not when cited files are read. Every trap below fired on the host before the
workspace moved into the sandbox (git ran there with safe.directory=*)."""
from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from assistant.jobs.manager import JobRequest
from assistant.testing.scripted_model import Reply, by_turn
from tests.fixtures.repos import make_calc_repo

pytestmark = pytest.mark.docker
AGENT = "You are a careful software engineer"


@pytest.fixture
def markers():
    """A host directory the traps aim at: it exists on the host, not in any sandbox."""
    root = Path("/tmp") / f"assistant-boundary-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    (root / "victim.txt").write_text("host file\n")
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)


def traps(marker_dir: Path, who: str) -> str:
    """Shell that plants every git hook-in a host git would execute, each touching a host marker."""
    m = f"{marker_dir}/{who}"
    hook = f"#!/bin/sh\\ntouch {m}-hook; id > {m}-hook-id\\n"
    return " && ".join([
        f"git config core.fsmonitor 'touch {m}-fsmonitor; false'",
        "printf '*.py filter=evil diff=evil\\n*.txt filter=evil\\n' >> .gitattributes",
        f"git config filter.evil.clean 'touch {m}-clean; cat'",
        f"git config filter.evil.smudge 'touch {m}-smudge; cat'",
        f"git config filter.evil.process 'touch {m}-process'",
        f"git config diff.evil.textconv 'touch {m}-textconv; cat'",
        f"git config diff.external 'touch {m}-external'",
        "mkdir -p .git/evil-hooks",
        *[f"printf '{hook}' > .git/evil-hooks/{name} && chmod +x .git/evil-hooks/{name}"
          for name in ("pre-commit", "post-checkout", "post-index-change", "reference-transaction", "post-applypatch")],
        "git config core.hooksPath .git/evil-hooks",
        f"git config core.sshCommand 'touch {m}-ssh'",
        f"git config core.pager 'touch {m}-pager; cat'",
    ])


def planted_markers(marker_dir: Path) -> list[str]:
    return sorted(p.name for p in marker_dir.iterdir() if p.name != "victim.txt")


def agent_script(*shell_commands: str, patch: str | None = None, summary: str = "Done 【F:calc.py†L1-L2】."):
    steps = [Reply.call("shell", command=c) for c in shell_commands]
    if patch:
        steps.append(Reply.call("apply_patch", patch=patch))
    return by_turn(*steps, Reply.text(summary))


EDIT = """*** Begin Patch
*** Update File: calc.py
@@ def add(a, b):
-    return a - b
+    return a + b
*** Add File: notes.txt
+a note
*** End Patch"""


def run(assistant, repo, **kw):
    job = assistant.jobs.submit(JobRequest(task="Fix add", repo=str(repo), **kw))[0]
    return assistant.jobs.wait(job.id, timeout=240)


@pytest.mark.parametrize("backend", ["docker", "local"])
def test_git_traps_planted_by_setup_and_agent_never_fire_on_the_host(
        tmp_path, docker_engine, scripted_model, assistant_for, reachable_data_dir, markers, backend):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [agent_script(traps(markers, "agent"), "git status >/dev/null",
                                                             patch=EDIT)], repeat_last=True)
    assistant = assistant_for(scripted_model, ASSISTANT_SANDBOX_BACKEND=backend,
                              ASSISTANT_DATA_DIR=reachable_data_dir, ASSISTANT_SETUP_CACHE="true")
    job = run(assistant, repo, setup=[traps(markers, "setup")])
    assert job.state == "succeeded", job.reason
    assert planted_markers(markers) == []
    # The diff was still taken, inside, and is the agent's change: the edit and the note, the traps' own
    # .gitattributes too (the agent wrote it), and nothing runs when a reviewer applies it.
    files = dict((path, status) for status, path in job.outcome["files"])
    assert files["calc.py"] == "modified" and files["notes.txt"] == "added"
    assert [c["valid"] for c in job.citations] == [True]

    # A follow-up applies the parent's patch in its own sandbox (once on the host, with git apply).
    scripted_model.reset()
    scripted_model.when_system_contains(AGENT, [agent_script("git diff --stat")], repeat_last=True)
    child = run(assistant, repo, setup=[], parent_job_id=job.id)
    assert child.state == "succeeded", child.reason
    assert [c.command for c in assistant.store.list_chunks(child.id)] == ["git diff --stat"]
    assert "calc.py" in dict((p, s) for s, p in child.outcome["files"])
    assert planted_markers(markers) == []


@pytest.mark.parametrize("backend", ["docker", "local"])
def test_a_git_dir_swapped_for_links_to_host_paths_is_not_followed(
        tmp_path, docker_engine, scripted_model, assistant_for, reachable_data_dir, markers, backend):
    """.git replaced by a link to a host repository whose config runs a command, and .git/objects pointing at a
    host directory: a host git would run the command and write objects there."""
    evil = markers / "evil-gitdir"
    subprocess.run(["git", "init", "-q", "--bare", str(evil)], check=True)
    subprocess.run(["git", "--git-dir", str(evil), "config", "core.fsmonitor", f"touch {markers}/gitdir-fsmonitor"],
                   check=True)
    objects = markers / "objects-dir"
    objects.mkdir()
    repo = make_calc_repo(tmp_path / "calc")
    script = agent_script("cp -r .git /tmp/real-git && rm -rf .git/objects && ln -s " + str(objects) + " .git/objects",
                          patch=EDIT)
    swap = agent_script("mv .git /tmp/moved-git && ln -s " + str(evil) + " .git", patch=EDIT)
    assistant = assistant_for(scripted_model, ASSISTANT_SANDBOX_BACKEND=backend, ASSISTANT_DATA_DIR=reachable_data_dir)
    for plan, marker in ((script, "ln -s " + str(objects)), (swap, "ln -s " + str(evil))):
        scripted_model.reset()
        scripted_model.when_system_contains(AGENT, [plan], repeat_last=True)
        job = run(assistant, repo, setup=[])
        assert job.state == "succeeded", job.reason
        assert marker in assistant.store.list_chunks(job.id)[0].command
        assert "could not be computed" in (assistant.store.get_artifact(job.id, "diff") or "")
    assert planted_markers(markers) == ["evil-gitdir", "objects-dir"]
    assert list(objects.iterdir()) == []
    assert sorted(p.name for p in evil.iterdir()) == sorted(["HEAD", "config", "description", "hooks", "info",
                                                              "objects", "refs", "branches"])


@pytest.mark.parametrize("backend", ["docker", "local"])
def test_symlink_swaps_racing_apply_patch_stay_inside_the_sandbox(
        tmp_path, docker_engine, scripted_model, assistant_for, reachable_data_dir, markers, backend):
    """A background process flips target.txt between a file and a link to a host file while the agent patches
    it over and over: the host file is never written (the engine writes inside the sandbox)."""
    repo = make_calc_repo(tmp_path / "calc")
    victim = markers / "victim.txt"
    flipper = (f"(for i in $(seq 1 4000); do ln -sfn {victim} target.txt; rm -f target.txt; "
               "echo plain > target.txt; done) >/dev/null 2>&1 &")
    steps = [Reply.call("shell", command=flipper)] + [
        Reply.call("apply_patch", patch=f"*** Begin Patch\n*** Add File: target.txt\n+patched {n}\n*** End Patch")
        for n in range(25)]
    scripted_model.when_system_contains(AGENT, [by_turn(*steps, Reply.text("done"))], repeat_last=True)
    assistant = assistant_for(scripted_model, ASSISTANT_SANDBOX_BACKEND=backend, ASSISTANT_DATA_DIR=reachable_data_dir)
    job = run(assistant, repo, setup=[])
    assert job.state == "succeeded", job.reason
    results = [c.text for c in assistant.store.list_chunks(job.id) if c.command == "apply_patch"]
    assert len(results) == 25 and any("Patch applied" in text for text in results)
    assert victim.read_text() == "host file\n"
    assert planted_markers(markers) == []


@pytest.mark.parametrize("backend", ["docker", "local"])
def test_setup_secrets_reach_setup_only(tmp_path, docker_engine, scripted_model, assistant_for, reachable_data_dir,
                                        monkeypatch, backend):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv("DEPLOY_TOKEN", secret)
    token_file = tmp_path / "token"
    token_file.write_text(f"file-{secret}\n")
    repo = make_calc_repo(tmp_path / "calc")
    look = ("env | grep -c s3cr3t; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c s3cr3t; "
            "grep -rl s3cr3t /workspace /home/agent /tmp 2>/dev/null | grep -v used-token | wc -l; "
            "ps -eo args | grep -c '[s]leep 600'")
    scripted_model.when_system_contains(AGENT, [agent_script(look)], repeat_last=True)
    assistant = assistant_for(scripted_model, ASSISTANT_SANDBOX_BACKEND=backend, ASSISTANT_DATA_DIR=reachable_data_dir,
                              ASSISTANT_SETUP_SECRETS=f"DEPLOY_TOKEN, FILE_TOKEN=@{token_file}",
                              ASSISTANT_SETUP_CACHE="false")
    setup = ['echo "using $DEPLOY_TOKEN and $FILE_TOKEN"',
             'test -n "$DEPLOY_TOKEN" && echo "$DEPLOY_TOKEN" | wc -c > used-token',  # a file setup chose to write
             "(nohup sleep 600 >/dev/null 2>&1 &)"]                                # a daemon holding the secret
    job = run(assistant, repo, setup=setup)
    assert job.state == "succeeded", job.reason
    chunks = assistant.store.list_chunks(job.id)
    setup_log = next(c for c in chunks if c.phase == "setup")
    assert setup_log.text == "using *** and ***\n"
    agent_look = next(c for c in chunks if c.command == look)
    assert agent_look.text.split() == ["0", "0", "0", "0"], agent_look.text
    # Nothing the product stored or wrote holds the secret: database, mirrors, caches.
    found = subprocess.run(["grep", "-rl", secret, str(reachable_data_dir)], capture_output=True, text=True)
    assert found.stdout == ""
