"""Login rules and the git actions on a finished job's patch, against real files and a real repository."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from assistant.web import gitops
from assistant.web.auth import ADMIN, PasswordBook, ensure_auth_secret, header_user
from assistant.web.cards import split_diff

from .harness import make_repo

PATCH = """diff --git a/calc.py b/calc.py
--- a/calc.py
+++ b/calc.py
@@ -7,3 +7,7 @@ def add(a, b):
 
 def sub(a, b):
     return a - b
+
+
+def mul(a, b):
+    return a * b
"""


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def test_generated_admin_password_is_kept_across_starts(settings_for, data_dir):
    first = PasswordBook(settings_for())
    again = PasswordBook(settings_for())
    password = (data_dir / "admin-password").read_text().strip()
    assert first.generated_admin and not again.generated_admin
    assert first.check(ADMIN, password) and again.check(ADMIN, password)
    assert not first.check(ADMIN, password + "x") and not first.check("root", password)
    assert oct((data_dir / "admin-password").stat().st_mode & 0o777) == "0o600"


def test_configured_users_replace_the_admin(settings_for, data_dir):
    book = PasswordBook(settings_for(ASSISTANT_USERS="ada:pw1,bob:pw2"))
    assert book.check("ada", "pw1") and book.check("bob", "pw2") and not book.check("ada", "pw2")
    assert not book.check(ADMIN, "") and not (data_dir / "admin-password").exists()


def test_auth_secret_is_generated_once_and_respected_when_set(settings_for):
    env: dict[str, str] = {}
    secret = ensure_auth_secret(settings_for(), env)
    assert env["CHAINLIT_AUTH_SECRET"] == secret and len(secret) >= 32
    assert ensure_auth_secret(settings_for(), {}) == secret
    assert ensure_auth_secret(settings_for(), {"CHAINLIT_AUTH_SECRET": "given"}) == "given"


def test_header_auth_only_trusts_the_named_header(settings_for):
    settings = settings_for(ASSISTANT_HEADER_AUTH="X-Forwarded-User")
    assert header_user(settings, {"X-Forwarded-User": "ada"}) == "ada"
    assert header_user(settings, {"X-Other": "ada"}) is None
    assert header_user(settings_for(), {"X-Forwarded-User": "ada"}) is None


def test_create_branch_commits_the_patch_without_touching_the_working_copy(tmp_path):
    repo = make_repo(tmp_path / "repo")
    base = git(repo, "rev-parse", "HEAD").strip()
    branch = gitops.branch_name_for(1, "Add a mul function!")
    commit = gitops.create_branch(repo, PATCH, base_commit=base, branch=branch, message="Add mul")
    assert branch == "assistant/job-1-add-a-mul-function"
    assert git(repo, "rev-parse", branch).strip() == commit
    assert "def mul" in git(repo, "show", f"{branch}:calc.py")
    assert "def mul" not in (repo / "calc.py").read_text()
    assert git(repo, "status", "--porcelain") == "" and git(repo, "branch", "--show-current").strip() == "main"
    with pytest.raises(gitops.GitOpError):
        gitops.create_branch(repo, PATCH, base_commit=base, branch=branch, message="again")


def test_local_repo_is_none_for_urls_and_plain_directories(tmp_path):
    assert gitops.local_repo("https://example.invalid/x.git") is None
    assert gitops.local_repo(str(tmp_path)) is None


def test_local_repo_is_remembered_until_the_repository_changes(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "repo")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert gitops.local_repo(str(repo)) == repo and gitops.local_repo(str(plain)) is None
    with monkeypatch.context() as without_git:
        without_git.setenv("PATH", "")  # answered again with no git to run: remembered
        assert gitops.local_repo(str(repo)) == repo and gitops.local_repo(str(plain)) is None
    shutil.rmtree(repo / ".git")
    assert gitops.local_repo(str(repo)) is None
    git(plain, "init", "-q")
    assert gitops.local_repo(str(plain)) == plain
    plain.rename(tmp_path / "moved")
    assert gitops.local_repo(str(plain)) is None


def test_split_diff_gives_one_section_per_file():
    two = PATCH + "diff --git a/new.py b/new.py\nnew file mode 100644\n--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+x = 1\n"
    assert [path for path, _ in split_diff(two)] == ["calc.py", "new.py"]
    assert split_diff(two)[1][1].endswith("+x = 1")


def test_login_throttle_locks_a_name_for_a_growing_while_and_a_right_password_clears_it():
    from assistant.web.auth import LoginThrottle, TooManyAttempts

    now = [1000.0]
    throttle = LoginThrottle(per_name=3, per_address=5, lock_s=10, lock_max_s=25, clock=lambda: now[0])
    for _ in range(3):
        throttle.check("Ada", "10.0.0.1")
        throttle.failed("Ada", "10.0.0.1")
    with pytest.raises(TooManyAttempts, match=r"too many attempts, try again in 10 s"):
        throttle.check("ada", "10.0.0.2")  # the name, whatever its case or address
    throttle.check("bob", "10.0.0.2")  # another name from another address is free
    now[0] += 10
    throttle.check("ada", "10.0.0.1")
    throttle.failed("ada", "10.0.0.1")  # one more wrong password after the lock: twice as long
    with pytest.raises(TooManyAttempts, match=r"in 20 s"):
        throttle.check("ada", None)
    now[0] += 20
    throttle.failed("ada", None)  # and then capped
    with pytest.raises(TooManyAttempts, match=r"in 25 s"):
        throttle.check("ada", None)
    # The address counts every name: five wrong passwords from it lock it for everyone there.
    for name in ("c1", "c2", "c3", "c4"):
        throttle.failed(name, "10.0.0.9")
    throttle.check("dora", "10.0.0.9")
    throttle.failed("dora", "10.0.0.9")
    with pytest.raises(TooManyAttempts):
        throttle.check("erin", "10.0.0.9")
    now[0] += 10
    throttle.succeeded("erin", "10.0.0.9")  # a right password clears its name and address
    throttle.check("erin", "10.0.0.9")
    throttle.failed("frank", "10.0.0.9")
    throttle.check("frank", "10.0.0.9")


def test_a_token_stands_for_the_access_it_was_made_with(settings_for):
    from assistant.web.auth import AccessBook

    counts = {"ada": 0}
    book = AccessBook(PasswordBook(settings_for(ASSISTANT_USERS="ada:pw1,bob:pw2")), lambda n: counts.get(n, 0),
                      "secret", ttl_s=0)
    stamp = book.stamp("ada", "credentials")
    assert book.valid("ada", {"provider": "credentials", "access": stamp})
    assert not book.valid("ada", {"provider": "credentials"}) and not book.valid("bob", {"access": stamp})
    counts["ada"] = 1  # revoked
    assert not book.valid("ada", {"provider": "credentials", "access": stamp})
    changed = AccessBook(PasswordBook(settings_for(ASSISTANT_USERS="ada:new,bob:pw2")), lambda n: 0, "secret", 0)
    assert not changed.valid("ada", {"provider": "credentials", "access": book.passwords.access_stamp(
        "ada", "credentials", 0, "secret")})
    removed = AccessBook(PasswordBook(settings_for(ASSISTANT_USERS="bob:pw2")), lambda n: 0, "secret", 0)
    assert removed.stamp("ada", "credentials") is None
    assert removed.stamp("ada", "header") is None  # no header login configured
