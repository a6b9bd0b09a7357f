"""Apply on a real project, from the web app: inflection's source distribution (taken from the package index with
pip at test time, as tests/e2e does) made a git repository; a job changes its module, a follow-up job changes it
again on top of that, and Apply brings both into the user's working copy in order (the follow-up only its own
change). Then the user edits a file without committing, and a new job's card says the working copy has uncommitted
changes, the job starts from the commit without them (its sandbox shows that), and the user's edits (and the applied
changes) are still there after the job and after its own Apply. Over the app's socket as a browser speaks it, with the
scripted model and the Docker sandbox."""
from __future__ import annotations

import os
import subprocess
import threading

import pytest

from assistant.store import Store
from assistant.testing.scripted_model import Reply, ScriptedModelServer, last_tool_output
from tests.e2e.projects import GIT_DATES, PROJECTS, download_sdist

from assistant.web.cards import plain

from . import scripts
from .harness import USERS, AppProcess, SocketClient, password_login
from .test_steer import has

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]

INFLECTION = next(p for p in PROJECTS if p.name == "inflection")
MODULE = "inflection/__init__.py"
LAST_LINE = "_irregular('zombie', 'zombies')"     # the module's last line in 0.5.1
OCTOPUS = "_irregular('octopus', 'octopi')"
CACTUS = "_irregular('cactus', 'cacti')"
DOC = "docs/plurals.rst"
MY_EDIT = "\nA note of mine, not committed yet.\n"


def git(repo, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_DATES}, check=True, capture_output=True,
                          text=True).stdout


def add_after(line: str, new: str) -> str:
    return f"*** Begin Patch\n*** Update File: {MODULE}\n@@\n {line}\n+{new}\n*** End Patch"


class ProjectAgent:
    """Job 1 adds a plural after the module's last line; the follow-up adds another after job 1's (so its patch only
    applies where job 1's change is); the docs job looks at its workspace first, then adds a page."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen: dict[str, str] = {}   # task keyword -> the output of its look at the workspace

    def __call__(self, request: dict) -> Reply:
        task = scripts._task(request).lower()
        steps = scripts._tool_results(request)
        if "document" in task:
            if steps == 0:
                return Reply.call("shell", command=f'echo "octopus lines: $(grep -cF "{OCTOPUS}" {MODULE})"; '
                                                   'echo "readme ends: $(tail -n 1 README.rst)"')
            if steps == 1:
                with self.lock:
                    self.seen["docs"] = last_tool_output(request)
                return Reply.call("apply_patch", patch=f"*** Begin Patch\n*** Add File: {DOC}\n+Plurals\n+=======\n"
                                                       "+\n+Irregular plurals include octopi.\n*** End Patch")
            return Reply.text(f"Added a page on plurals \u3010F:{DOC}\u2020L1-L1\u3011.")
        if "building on job 1" in task:
            if steps == 0:
                return Reply.call("apply_patch", patch=add_after(OCTOPUS, CACTUS))
            return Reply.text(f"Added the cactus plural after job 1's octopus \u3010F:{MODULE}\u2020L1-L1\u3011.")
        if "octopus" in task:
            if steps == 0:
                return Reply.call("apply_patch", patch=add_after(LAST_LINE, OCTOPUS))
            return Reply.text(f"Added the octopus plural \u3010F:{MODULE}\u2020L1-L1\u3011.")
        return Reply.text("Nothing to do.")


@pytest.fixture
def world(tmp_path, docker_engine):
    source = download_sdist(INFLECTION, tmp_path / "sdist")
    module = (source / MODULE).read_text()
    assert module.endswith(LAST_LINE + "\n") and module.count(LAST_LINE) == 1, module[-200:]
    git(source, "init", "-q", "-b", "main")
    git(source, "add", "-A")
    git(source, "commit", "-q", "-m", "inflection 0.5.1")
    agent = ProjectAgent()
    model = ScriptedModelServer().start()
    model.when_system_contains(scripts.ROUTER, [lambda _r: Reply.text('{"route": "job", "job": null}')],
                               repeat_last=True)
    model.when_system_contains(scripts.AGENT, [agent], repeat_last=True)
    app = AppProcess(tmp_path / "data", model.base_url, source, tmp_path / "app.log",
                     ASSISTANT_REPO_ROOTS=str(tmp_path)).start()
    _, token, _ = password_login(app.url, "alice", USERS["alice"])
    client = SocketClient(app.url, token)
    assert client.connect(), client.error
    yield {"client": client, "repo": source, "agent": agent, "data": tmp_path / "data"}
    for closer in (client.close, app.stop, model.stop):
        try:
            closer()
        except Exception:
            pass


def job_card_actions(client: SocketClient, job_id: str, name: str) -> dict:
    """The payload of a button of a job's card, once the card has it."""
    found: list[dict] = []

    def check(events) -> bool:
        found[:] = [d for e, d in events if e == "action" and d.get("name") == name
                    and (d.get("payload") or {}).get("job_id") == job_id]
        return bool(found)
    assert client.wait_for(check, 60), f"no {name} button for job {job_id}"
    return found[-1]["payload"]


def apply(client: SocketClient, job, *expected: str) -> str:
    payload = job_card_actions(client, job.id, "apply_job")
    status, text = client.action("apply_job", payload)
    assert status == 200, text
    return has(client, *(plain(e) for e in expected))   # the notice is Markdown-inert text: paths escaped


def test_stacked_apply_and_uncommitted_edits_on_a_real_project(world):
    client, repo = world["client"], world["repo"]
    head = git(repo, "rev-parse", "HEAD").strip()
    original = (repo / MODULE).read_text()

    client.send("/code Add an irregular plural for octopus")
    has(client, "### Job 1", "succeeded", timeout=300)
    client.send("/code Building on job 1, add an irregular plural for cactus too")
    has(client, "### Job 2", "succeeded", timeout=300)
    with client._lock:
        thread_id = next(d["thread_id"] for e, d in client.events if e == "first_interaction")
    store = Store(f"sqlite:///{world['data'] / 'assistant.db'}")
    try:
        jobs = {j.number: j for j in store.list_jobs(thread_id=thread_id)}
        assert jobs[2].parent_job_id == jobs[1].id
        patch_2 = store.get_artifact(jobs[2].id, "patch")
        assert OCTOPUS in patch_2 and CACTUS in patch_2     # the follow-up's patch holds its parent's change
        assert git(repo, "status", "--porcelain") == ""      # nothing touched the working copy yet

        apply(client, jobs[1], f"Applied job 1's change to {repo} (uncommitted).")
        assert (repo / MODULE).read_text() == original + OCTOPUS + "\n"
        stacked = apply(client, jobs[2], "Applied job 2's change on top of job 1's, already in your working copy")
        assert MODULE in stacked                              # its stat
        module = (repo / MODULE).read_text()
        assert module.count(OCTOPUS) == 1 and module.count(CACTUS) == 1
        assert module == original + OCTOPUS + "\n" + CACTUS + "\n"
        assert git(repo, "rev-parse", "HEAD").strip() == head   # applied, not committed

        # The user edits a file of their own and starts another job without committing.
        with open(repo / "README.rst", "a") as readme:
            readme.write(MY_EDIT)
        readme_now = (repo / "README.rst").read_text()
        client.send("/code Document the irregular plurals in the docs")
        notice = has(client, "### Job 3", "Your working copy has uncommitted changes in 2 files")
        assert f"this job starts from commit {head[:12]} without them." in notice, notice
        assert "README.rst" in notice and "inflection/\\_\\_init\\_\\_.py" in notice, notice
        done = has(client, "### Job 3", "succeeded", timeout=300)
        assert "Your working copy has uncommitted changes in 2 files" in done   # still on the final card
        # Its sandbox had the commit without them: no octopus, the README's last line the release's, a clean tree.
        seen = world["agent"].seen["docs"]
        assert "octopus lines: 0" in seen and "readme ends: " in seen and "not committed yet" not in seen, seen
        # The working copy kept the user's edit and the applied changes while the job ran.
        assert (repo / "README.rst").read_text() == readme_now
        assert (repo / MODULE).read_text() == module
        job_3 = next(j for j in store.list_jobs(thread_id=thread_id) if j.number == 3)
        assert job_3.parent_job_id is None and job_3.base_commit == head
        apply(client, job_3, f"Applied job 3's change to {repo} (uncommitted).")
        assert (repo / DOC).read_text() == "Plurals\n=======\n\nIrregular plurals include octopi.\n"
        assert (repo / "README.rst").read_text() == readme_now and (repo / MODULE).read_text() == module
        assert sorted(git(repo, "status", "--porcelain").splitlines()) == [
            " M README.rst", f" M {MODULE}", "?? docs/plurals.rst"]
        assert git(repo, "rev-parse", "HEAD").strip() == head
    finally:
        store.close()
