"""Names in a repository that cannot be read as a file (a committed symlink loop, a dangling link, a link out of the
repository, a directory, a FIFO, a file this process may not read) are answered like a missing file on every read
path: the quick-answer tools, the citation check, `assistant ask`. Too large and binary files get their own clear
answer. None of these answers is a traceback or names a host path."""
import os
import subprocess
import sys

import pytest

from assistant.access import RepoPolicy
from assistant.agent.citations import check_citations
from assistant.conversation.repo_tools import ReadOnlyRepo
from assistant.testing.scripted_model import Reply, by_turn
from tests.fixtures.repos import git, make_calc_repo

ANSWER = "You answer questions about a codebase"
MISSING = "no file 'missing.txt' in the repository"


def make_tricky_repo(root, outside):
    """The calc repository plus, committed: a symlink loop a -> b -> a, a dangling link, a link out of the repository,
    a non-UTF-8 file, a binary file; and, not committed (git cannot hold them): a FIFO and a file nobody may read."""
    repo = make_calc_repo(root)
    os.symlink("b", repo / "a")
    os.symlink("a", repo / "b")
    os.symlink("gone.txt", repo / "dangling")
    os.symlink(str(outside), repo / "escape")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "mod.py").write_text("X = 1\n")
    (repo / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (repo / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tricky names")
    assert git(repo, "ls-files", "-s", "a").startswith("120000")   # committed as a symlink
    os.mkfifo(repo / "fifo")
    (repo / "locked.txt").write_text("locked\n")
    (repo / "locked.txt").chmod(0)
    return repo


@pytest.fixture
def tricky(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("host secret\n")
    repo = make_tricky_repo(tmp_path / "calc", outside)
    yield repo
    (repo / "locked.txt").chmod(0o644)


def unreadable_names(repo) -> list[str]:
    names = ["a", "b", "a/x", "dangling", "escape", "pkg", "fifo", "missing.txt"]
    if os.geteuid() != 0:  # root reads a mode-0 file anyway
        names.append("locked.txt")
    return names


def host_path_free(text: str, repo) -> bool:
    return str(repo) not in text and str(repo.parent) not in text and "Traceback" not in text


@pytest.mark.timeout(60)
def test_tools_answer_unreadable_names_like_missing_files(tricky, tmp_path):
    repo_view = ReadOnlyRepo(tricky, RepoPolicy(data_dir=tmp_path / "data"))
    for name in unreadable_names(tricky):
        out = repo_view.run("read_file", {"path": name})
        assert out == f"error: no file {name!r} in the repository", (name, out)
        assert repo_view.text_of(name) is None and repo_view.line_count(name) is None
    assert "host secret" not in repo_view.run("read_file", {"path": "escape"})
    for name in ("a", "b", "dangling", "fifo"):
        assert repo_view.run("list_files", {"path": name}) == f"error: no directory {name!r} in the repository"
        assert repo_view.run("search", {"pattern": "x", "path": name}) == f"error: no directory {name!r} in the repository"
    listed = repo_view.run("list_files", {}).splitlines()
    assert "calc.py" in listed and "pkg/mod.py" in listed and "latin1.txt" in listed
    assert not {"a", "b", "dangling", "escape", "fifo"} & set(listed), listed   # names that cannot be read
    found = repo_view.run("search", {"pattern": "secret|lait|def add"})
    assert "calc.py:1:def add" in found and "latin1.txt:1:caf\ufffd au lait" in found and "secret" not in found
    latin = repo_view.run("read_file", {"path": "latin1.txt"})
    assert "    1 | caf\ufffd au lait" in latin
    assert repo_view.run("read_file", {"path": "blob.bin"}).startswith("error: 'blob.bin' is a binary file")
    assert repo_view.text_of("blob.bin") is None
    for out in (repo_view.run("read_file", {"path": n}) for n in unreadable_names(tricky)):
        assert host_path_free(out, tricky)


@pytest.mark.timeout(60)
def test_a_huge_file_is_refused_with_a_clear_answer(tmp_path):
    repo = make_calc_repo(tmp_path / "calc")
    with open(repo / "huge.log", "wb") as handle:   # sparse: 64 MB of size, no disk used
        handle.truncate(64 * 1024 * 1024)
    view = ReadOnlyRepo(repo, RepoPolicy(data_dir=tmp_path / "data"))
    out = view.run("read_file", {"path": "huge.log"})
    assert out.startswith("error: 'huge.log' is 64.0 MB, more than the 8.0 MB that are read whole"), out
    assert view.text_of("huge.log") is None
    [c] = check_citations("see 【F:huge.log†L1-L2】", file_roots=[repo])
    assert not c.valid and c.reason.startswith("huge.log is 64.0 MB"), c.reason


@pytest.mark.timeout(60)
def test_citations_of_unreadable_names_are_unverified(tricky, tmp_path):
    names = unreadable_names(tricky)
    text = " ".join(f"【F:{n}†L1-L1】" for n in names) + " 【F:calc.py†L1-L2】 【F:latin1.txt†L1】"
    checked = check_citations(text, file_roots=[tricky])
    assert [(c.target, c.valid) for c in checked] == [(n, False) for n in names] + [("calc.py", True),
                                                                                     ("latin1.txt", True)]
    assert all(c.reason == f"no file {c.target} in the workspace" for c in checked if not c.valid)
    view = ReadOnlyRepo(tricky, RepoPolicy(data_dir=tmp_path / "data"))
    via_repo = check_citations(text, file_lines=view.line_count)
    assert [c.valid for c in via_repo] == [c.valid for c in checked]


@pytest.mark.timeout(120)
def test_a_quick_answer_reads_a_symlink_loop_and_goes_on(tricky, scripted_model, assistant_for):
    scripted_model.when_system_contains(ANSWER, [by_turn(
        Reply.call("read_file", path="a"),
        Reply.call("read_file", path="fifo"),
        Reply.text("`a` cannot be read 【F:a†L1】; `add` is in 【F:calc.py†L1-L2】."),
    )], repeat_last=True)
    a = assistant_for(scripted_model)
    thread = a.store.create_thread(user_id=None, repo=str(tricky))
    events = list(a.conversation.answer(thread.id, "What is in the file a?"))
    tools = [e for e in events if e.kind == "tool"]
    assert [t.data["output"] for t in tools] == ["error: no file 'a' in the repository",
                                                 "error: no file 'fifo' in the repository"]
    done = events[-1]
    assert done.kind == "done", [(e.kind, e.text) for e in events]
    assert [(c["target"], c["valid"]) for c in done.data["citations"]] == [("a", False), ("calc.py", True)]


@pytest.mark.timeout(180)
def test_assistant_ask_answers_cleanly_about_a_symlink_loop(tricky, tmp_path, scripted_model):
    """`assistant ask` as a user runs it: a real subprocess, the scripted model over HTTP."""
    scripted_model.when_system_contains(ANSWER, [by_turn(
        Reply.call("read_file", path="a"),
        Reply.call("list_files"),
        Reply.call("search", pattern="add"),
        Reply.text("There is no readable file `a` 【F:a†L1】."),
    )], repeat_last=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTANT_", "OPENAI_"))}
    env.update(ASSISTANT_DATA_DIR=str(tmp_path / "data"), OPENAI_BASE_URL=scripted_model.base_url,
               OPENAI_API_KEY="k", ASSISTANT_MODEL="scripted-model", ASSISTANT_CONFIG=str(tmp_path / "none.toml"),
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    done = subprocess.run([sys.executable, "-m", "assistant.cli", "ask", "--repo", str(tricky),
                           "What is in the file a?"], env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    assert "routed: answer" in done.stderr, done.stderr
    assert "There is no readable file `a`" in done.stdout
    assert "[a:L1 ✗ no file a in the workspace]" in done.stdout, done.stdout
    assert host_path_free(done.stdout, tricky) and "Traceback" not in done.stderr, done.stderr
    assert "read_file" in done.stderr and "Symlink loop" not in done.stderr
