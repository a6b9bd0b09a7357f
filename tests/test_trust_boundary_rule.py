"""The trust boundary's rule (docs/trust-boundary.md), checked over the package's source: host git runs only
where no untrusted code ever wrote, and nothing on the host unpacks, re-owns or git-reads a workspace."""
from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "assistant"

# Module -> why host git is safe there.
HOST_GIT_ALLOWED = {
    "sandbox/repo.py": "the bare mirror under <data dir>/mirrors: no job writes there",
    "sandbox/guest/workspace_ops.py": "runs inside the sandbox, as the sandbox user",
    "conversation/checkout.py": "the quick-answer checkout of a git URL: no job writes there",
    "web/gitops.py": "the user's own repository, on the user's request: git apply of patch data",
    "jobs/apply.py": "the user's own repository, on the user's request: git apply of patch data (a stack's delta is "
                     "worked out in a scratch index)",
    "jobs/uncommitted.py": "the user's own working copy, read only (status; a patch made in a scratch index): no job "
                           "writes there",
}
GIT_CALL = re.compile(r"""(\[\s*["']git["']|\bgit\.Repo\b|\bimport git\b|GIT\s*\+)""")


def sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path.read_text()


def test_host_git_runs_only_where_no_job_ever_wrote():
    offenders = [name for name, text in sources() if GIT_CALL.search(text) and name not in HOST_GIT_ALLOWED]
    assert offenders == [], f"host git outside the allowed modules: {offenders} (see docs/trust-boundary.md)"


def test_nothing_extracts_archives_reowns_trees_or_trusts_any_directory():
    banned = {"extractall": "archive extraction follows links", "safe.directory": "host git in a foreign tree",
              '"chown", "-R"': "chown -R follows links", "os.walk": "walking a workspace from the host"}
    allowed = {("conversation/repo_tools.py", "os.walk")}  # the user's repository for quick answers, no workspace
    found = [(name, word) for name, text in sources() for word in banned
             if word in text and (name, word) not in allowed]
    assert found == [], [(name, word, banned[word]) for name, word in found]
