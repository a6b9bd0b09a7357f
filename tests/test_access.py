"""Who may name which repository: one user may use any path but the data dir; several users only paths under
ASSISTANT_REPO_ROOTS. Real directories and symlinks; the policy, the read tools, job submission and the CLI."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from assistant.access import RepoNotAllowed, RepoPolicy, multi_user
from assistant.conversation.repo_tools import ReadOnlyRepo
from assistant.jobs.manager import JobRequest

TWO_USERS = "ada:pw1,bob:pw2"


@pytest.fixture
def layout(tmp_path, data_dir):
    """A root with a project, a link out of the root, a link into the data dir, and a secret outside."""
    root = tmp_path / "roots" / "team"
    project = root / "project"
    project.mkdir(parents=True)
    (project / "app.py").write_text("print('hi')\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret\n")
    (root / "escape").symlink_to(outside)
    (root / "into-data").symlink_to(data_dir)
    (data_dir / "admin-password").write_text("hunter2\n")
    return {"root": root, "project": project, "outside": outside, "data": data_dir}


def policy(settings_for, **env) -> RepoPolicy:
    return RepoPolicy.from_settings(settings_for(**env))


def refused(pol: RepoPolicy, repo: str) -> str:
    with pytest.raises(RepoNotAllowed) as err:
        pol.check(repo)
    return str(err.value)


def test_several_users_or_a_trusted_header_make_a_server_multi_user(settings_for):
    assert not multi_user(settings_for())
    assert not multi_user(settings_for(ASSISTANT_USERS="ada:pw1"))
    assert multi_user(settings_for(ASSISTANT_USERS=TWO_USERS))
    assert multi_user(settings_for(ASSISTANT_HEADER_AUTH="X-Forwarded-User"))


def test_one_user_may_name_any_path_but_the_data_dir(settings_for, layout):
    pol = policy(settings_for)
    for allowed in (layout["project"], layout["outside"], layout["root"] / "escape", layout["data"].parent):
        assert pol.check(str(allowed)) == str(allowed)
    for data in (layout["data"], layout["data"] / "workspaces", layout["root"] / "into-data",
                 f"{layout['data']}/../{layout['data'].name}", f"file://{layout['data']}"):
        assert "data directory" in refused(pol, str(data))


def test_several_users_only_under_the_roots(settings_for, layout):
    pol = policy(settings_for, ASSISTANT_USERS=TWO_USERS, ASSISTANT_REPO_ROOTS=f"/nonexistent:{layout['root']}")
    assert pol.check(str(layout["project"])) == str(layout["project"])
    assert pol.check(f"file://{layout['project']}")
    for escape in (layout["outside"], layout["root"] / "escape", f"{layout['project']}/../../../outside",
                   f"file://{layout['outside']}", "/etc"):
        message = refused(pol, str(escape))
        assert "outside the directories" in message and "ASSISTANT_REPO_ROOTS" in message
    assert "data directory" in refused(pol, str(layout["root"] / "into-data"))
    # A root may hold the data dir, but a repository that contains it would expose it.
    wide = policy(settings_for, ASSISTANT_USERS=TWO_USERS, ASSISTANT_REPO_ROOTS=str(layout["data"].parent.parent))
    assert "contains the assistant's data directory" in refused(wide, str(layout["data"].parent))


def test_without_roots_a_multi_user_server_takes_git_urls_only(settings_for, layout):
    pol = policy(settings_for, ASSISTANT_HEADER_AUTH="X-User")
    assert "ASSISTANT_REPO_ROOTS is not set" in refused(pol, str(layout["project"]))
    for url in ("https://example.invalid/org/repo.git", "ssh://git@example.invalid/org/repo.git",
                "git@example.invalid:org/repo.git"):
        assert pol.check(url) == url
    assert "unsupported URL scheme 'ext'" in refused(pol, "ext://sh -c id")


def test_read_tools_never_read_the_data_dir_even_under_the_repository(settings_for, layout):
    """One user's repository may contain the data dir (a home directory); the tools still skip it."""
    pol = policy(settings_for)
    home = layout["data"].parent
    (home / "notes.txt").write_text("fine to read\n")
    view = ReadOnlyRepo(home, pol)
    assert "fine to read" in view.read_file("notes.txt")
    rel = layout["data"].name
    with pytest.raises(ValueError):
        view.read_file(f"{rel}/admin-password")
    with pytest.raises(ValueError):
        view.list_files(rel)
    assert f"{rel}/admin-password" not in view.list_files()
    assert "hunter2" not in view.search("hunter2") and "(no matches)" in view.search("hunter2")
    assert view.line_count(f"{rel}/admin-password") is None


def test_read_tools_do_not_follow_links_out_of_the_repository(settings_for, layout):
    pol = policy(settings_for, ASSISTANT_USERS=TWO_USERS, ASSISTANT_REPO_ROOTS=str(layout["root"]))
    (layout["project"] / "leak.txt").symlink_to(layout["outside"] / "secret.txt")
    (layout["project"] / "leakdir").symlink_to(layout["outside"])
    view = ReadOnlyRepo(layout["project"], pol)
    assert "top secret" not in view.search("secret") and "top secret" not in view.search("top")
    for path in ("leak.txt", "leakdir/secret.txt", "../outside/secret.txt"):
        with pytest.raises(ValueError):
            view.read_file(path)


def test_job_submission_refuses_a_repository_the_policy_forbids(settings_for, scripted_model, layout, assistant_for):
    a = assistant_for(scripted_model, ASSISTANT_USERS=TWO_USERS, ASSISTANT_REPO_ROOTS=str(layout["root"]))
    for repo in (str(layout["outside"]), str(layout["data"]), str(layout["root"] / "escape")):
        with pytest.raises(RepoNotAllowed):
            a.jobs.submit(JobRequest(task="Add a test", repo=repo))
    assert a.store.list_jobs() == []  # nothing was queued


def test_the_cli_refuses_a_repository_the_policy_forbids(tmp_path, layout):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTANT_", "OPENAI_"))}
    env.update(ASSISTANT_DATA_DIR=str(layout["data"]), ASSISTANT_USERS=TWO_USERS,
               ASSISTANT_REPO_ROOTS=str(layout["root"]), ASSISTANT_CONFIG=str(tmp_path / "none.toml"),
               OPENAI_BASE_URL="http://127.0.0.1:9/v1", OPENAI_API_KEY="k")
    for args in (["run", "--repo", str(layout["outside"]), "Fix it"], ["ask", "--repo", str(layout["data"]), "What?"]):
        proc = subprocess.run([sys.executable, "-m", "assistant.cli", *args], env=env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "--repo refused" in proc.stderr and ("ASSISTANT_REPO_ROOTS" in proc.stderr or "data directory" in proc.stderr)
