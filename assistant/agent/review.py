"""Review flags on a job's diff: what a careful reviewer would stop at before trusting it.

Works on the diff as text (the stored `diff` and `patch` artifacts) and the task's words, never on
the workspace. Each flag names the file it is about.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

# Flag kinds, in the order a reviewer should read them.
TEST_DELETED = "test_deleted"
TEST_WEAKENED = "test_weakened"
TEST_CHANGED = "test_changed"
GENERATED = "generated_files"
LOCKFILE = "lockfile"
BINARY = "binary_file"
LARGE = "large_file"
UNREFERENCED = "unreferenced_file"
FORMATTING = "formatting_only"
ORDER = (TEST_DELETED, TEST_WEAKENED, TEST_CHANGED, GENERATED, LOCKFILE, BINARY, LARGE, UNREFERENCED, FORMATTING)
TEST_TAMPERING = (TEST_DELETED, TEST_WEAKENED, TEST_CHANGED)

LARGE_LINES = 1000
LARGE_BYTES = 256 * 1024


@dataclass(frozen=True)
class ReviewFlag:
    kind: str
    path: str
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Hunk:
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)


@dataclass
class FileChange:
    path: str
    status: str = "modified"          # added | modified | deleted | renamed | copied
    old_path: str | None = None
    binary: bool = False
    size: int | None = None           # bytes of a binary file's new content, from the patch
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def added(self) -> list[str]:
        return [line for h in self.hunks for line in h.added]

    @property
    def removed(self) -> list[str]:
        return [line for h in self.hunks for line in h.removed]


# ---------------------------------------------------------------------------------------------- parsing
_C_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def git_path(text: str, side: str = "b") -> str | None:
    """A path as git prints it (maybe C-quoted, with an a/ or b/ prefix, or /dev/null) as plain text."""
    text = text.rstrip("\t")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        raw, body, i = bytearray(), text[1:-1], 0
        while i < len(body):
            if body[i] == "\\" and i + 1 < len(body):
                octal = re.match(r"[0-7]{3}", body[i + 1:])
                if octal:
                    raw.append(int(octal.group(0), 8))
                    i += 4
                    continue
                raw.append(_C_ESCAPES.get(body[i + 1], ord(body[i + 1])))
                i += 2
                continue
            raw.extend(body[i].encode())
            i += 1
        text = raw.decode("utf-8", "replace")
    if text == "/dev/null":
        return None
    return text[2:] if text.startswith(side + "/") else text


def _header_line(change: FileChange, line: str) -> None:
    if line.startswith("new file mode"):
        change.status = "added"
    elif line.startswith("deleted file mode"):
        change.status = "deleted"
    elif line.startswith(("rename from ", "copy from ")):
        change.status = "renamed" if line.startswith("rename") else "copied"
        change.old_path = git_path(line.split(" ", 2)[2], "a")
    elif line.startswith(("rename to ", "copy to ")):
        change.path = git_path(line.split(" ", 2)[2], "b") or change.path
    elif line.startswith("+++ "):
        change.path = git_path(line[4:], "b") or change.path
    elif line.startswith(("Binary files ", "GIT binary patch")):
        change.binary = True
    elif line.startswith("literal ") and change.binary and change.size is None:
        change.size = int(line.split()[1]) if line.split()[1].isdigit() else None


def parse_diff(diff: str) -> list[FileChange]:
    """The files of a `git diff` (display or --binary patch) with their hunks' removed and added lines."""
    changes: list[FileChange] = []
    in_hunk = False
    for line in (diff or "").splitlines():
        if line.startswith("diff --git "):
            match = re.match(r'diff --git (".*?"|\S+) (".*"|\S+)$', line)
            path = git_path(match.group(2), "b") if match else line[11:]
            changes.append(FileChange(path=path or line[11:]))
            in_hunk = False
        elif not changes:
            continue
        elif line.startswith("@@"):
            changes[-1].hunks.append(Hunk())
            in_hunk = True
        elif in_hunk and line[:1] in "+-" and changes[-1].hunks:
            (changes[-1].hunks[-1].added if line[0] == "+" else changes[-1].hunks[-1].removed).append(line[1:])
        elif in_hunk and line[:1] in (" ", "\\"):
            continue
        else:
            in_hunk = False
            _header_line(changes[-1], line)
    return changes


# ---------------------------------------------------------------------------------------------- the task
@dataclass(frozen=True)
class TaskIntent:
    """What the task asks for, as far as the flags care."""
    tests: bool              # writing or changing tests is part of the work
    test_removal: bool       # removing or skipping tests is part of the work
    formatting: bool
    dependencies: bool


_ASKS_TESTS = re.compile(r"\b(add|write|create|update|extend|improve|change|modify|rewrite|adjust|refactor|cover|"
                         r"correct|new|more|missing)\b[^.!?\n]{0,40}\b(tests?|specs?|test[- ]?cases?|test[- ]suite|"
                         r"assertions?|fixtures?)\b|\btest coverage\b|\b(tests?|specs?) (is|are) wrong\b", re.I)
_FAILING_TEST = re.compile(r"\b(failing|broken|red|flaky|failed)\s+(unit\s+)?(tests?|specs?)\b", re.I)
_REMOVES_TESTS = re.compile(r"\b(remove|delete|drop|skip|disable|xfail|quarantine)\b[^.!?\n]{0,40}\b(tests?|specs?)\b",
                            re.I)
_FORMATTING = re.compile(r"\b(format\w*|reformat\w*|lint\w*|style|whitespace|indent\w*|black|prettier|ruff|isort)\b", re.I)
_DEPENDENCIES = re.compile(r"\b(dependenc\w*|upgrade\w*|bump\w*|lock ?files?|lockfiles?|pin\w*|install\w*|"
                           r"package versions?|requirements)\b", re.I)


def task_intent(task: str) -> TaskIntent:
    text = _FAILING_TEST.sub("the problem", task or "")   # "fix the failing test" asks to fix the code, not the test
    return TaskIntent(bool(_ASKS_TESTS.search(text)), bool(_REMOVES_TESTS.search(text)),
                      bool(_FORMATTING.search(task or "")), bool(_DEPENDENCIES.search(task or "")))


# ---------------------------------------------------------------------------------------------- classifying files
_TEST_NAME = re.compile(r"^(test_.*|.*_test|.*_tests|tests?|conftest|.*\.(test|spec)|.*Tests?|.*_spec)$")
_TEST_DIRS = {"test", "tests", "testing", "__tests__", "spec", "specs", "t"}
_GENERATED_DIRS = {".venv", "venv", "env", ".env", "node_modules", "__pycache__", ".pytest_cache", ".mypy_cache",
                   ".ruff_cache", ".tox", ".nox", ".cache", "build", "dist", ".eggs", "htmlcov", "target", ".gradle"}
_GENERATED_FILES = re.compile(r"(\.pyc|\.pyo|\.egg-info(/.*)?|\.coverage|\.so|\.o)$")
LOCKFILES = {"package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock", "Pipfile.lock",
             "uv.lock", "pdm.lock", "Cargo.lock", "go.sum", "composer.lock", "Gemfile.lock", "mix.lock",
             "packages.lock.json", "flake.lock", "bun.lockb"}
_DOCS = re.compile(r"^(readme|changelog|changes|history|news|license|licence|authors|contributing|copying|notice)(\..*)?$"
                   r"|\.(md|rst|adoc)$", re.I)
_SCRATCH = re.compile(r"^(debug|scratch|tmp|temp|test_?output|output|out|repro|reproduce|reproduction|foo|bar|"
                      r"sandbox|playground|untitled)[\w.-]*$|\.(log|out|orig|rej|bak|swp|tmp)$|~$", re.I)

_ASSERTION = re.compile(r"^\s*(assert\b|self\.assert\w*\(|self\.fail\w*\(|(?:await\s+)?expect\(|assert_eq!|assert_ne!|"
                        r"assert!|t\.(Error|Errorf|Fatal|Fatalf|Fail)\(|(?:with\s+)?(?:pytest\.raises|self\.assertRaises)|"
                        r"assertThat\(|\w+\.should\b|should\.|eq_\(|ok_\()")
_TEST_FUNCTION = re.compile(r"^\s*(async\s+)?def test\w*\(|^\s*(it|test)\(\s*['\"`]|^\s*func Test\w+\(|^\s*#\[test\]")
_SKIP = re.compile(r"@pytest\.mark\.(skip|skipif|xfail)\b|@(?:unittest\.)?(skip|skipIf|skipUnless|expectedFailure)\b|"
                   r"\bpytest\.(skip|xfail|importorskip)\(|\bself\.skipTest\(|\b(it|test|describe)\.(skip|todo)\(|"
                   r"\bx(it|describe|test)\(|@Ignore\b|@Disabled\b|\bt\.Skip(Now|f)?\(|#\[ignore\]|\braise SkipTest\b")


def is_test_file(path: str) -> bool:
    p = PurePosixPath(path)
    return bool(_TEST_NAME.match(p.stem)) or any(part in _TEST_DIRS for part in p.parts[:-1])


def generated_root(path: str) -> str | None:
    """The directory (or file) of environment or build output a path belongs to, if it does."""
    parts = PurePosixPath(path).parts
    for i, part in enumerate(parts[:-1]):
        if part in _GENERATED_DIRS or part.endswith(".egg-info"):
            return "/".join(parts[:i + 1]) + "/"
    return path if _GENERATED_FILES.search(path) else None


# ---------------------------------------------------------------------------------------------- the checks
def _count(pattern: re.Pattern, lines: Sequence[str]) -> int:
    return sum(1 for line in lines if pattern.search(line))


def _test_flags(change: FileChange, intent: TaskIntent) -> list[ReviewFlag]:
    if change.status == "deleted":
        return [] if intent.test_removal else [ReviewFlag(TEST_DELETED, change.path, "test file deleted")]
    weakened = []
    removed_asserts = _count(_ASSERTION, change.removed) - _count(_ASSERTION, change.added)
    if removed_asserts > 0:
        weakened.append(f"{removed_asserts} assertion{'s' if removed_asserts != 1 else ''} removed")
    removed_tests = _count(_TEST_FUNCTION, change.removed) - _count(_TEST_FUNCTION, change.added)
    if removed_tests > 0:
        weakened.append(f"{removed_tests} test{'s' if removed_tests != 1 else ''} removed")
    skips = [line.strip() for line in change.added if _SKIP.search(line)]
    if skips:
        weakened.append(f"skip/xfail added: `{skips[0][:80]}`")
    if weakened and not intent.test_removal:
        return [ReviewFlag(TEST_WEAKENED, change.path, "; ".join(weakened))]
    if change.status in ("modified", "renamed") and change.removed and not intent.tests:
        changed_asserts = _count(_ASSERTION, change.removed)
        what = (f"{changed_asserts} assertion{'s' if changed_asserts != 1 else ''} rewritten" if changed_asserts
                else f"{len(change.removed)} existing line{'s' if len(change.removed) != 1 else ''} changed")
        return [ReviewFlag(TEST_CHANGED, change.path, f"{what} in an existing test, though the task asked for no test changes")]
    return []


def _squash(lines: Sequence[str], quotes: bool) -> str:
    text = "".join("".join(line.split()) for line in lines)
    return text.replace("'", '"') if quotes else text


def _formatting_flag(change: FileChange) -> ReviewFlag | None:
    hunks = [h for h in change.hunks if h.removed or h.added]
    if not hunks or change.status != "modified":
        return None
    cosmetic = [h for h in hunks if _squash(h.removed, True) == _squash(h.added, True)]
    if not cosmetic:
        return None
    whitespace = all(_squash(h.removed, False) == _squash(h.added, False) for h in cosmetic)
    what = "whitespace" if whitespace else "formatting"
    if len(cosmetic) == len(hunks):
        return ReviewFlag(FORMATTING, change.path, f"only {what} changes")
    return ReviewFlag(FORMATTING, change.path, f"{len(cosmetic)} of {len(hunks)} hunks change only {what}")


def _referenced(change: FileChange, others: Sequence[FileChange], task: str) -> bool:
    p = PurePosixPath(change.path)
    names = {p.name, p.stem, change.path, ".".join(p.with_suffix("").parts)}
    # Two characters are enough for a name with a digit ("module m9"); other short stems ("io", "db") would match
    # ordinary words of a task.
    names = {n for n in names if len(n) >= 3 or (len(n) == 2 and any(c.isdigit() for c in n))}
    texts = [task] + ["\n".join(o.added) for o in others if o is not change]
    return any(re.search(r"(?<![\w-])" + re.escape(n) + r"(?![\w-])", text) for text in texts for n in names)


def _unreferenced_flag(change: FileChange, others: Sequence[FileChange], task: str) -> ReviewFlag | None:
    name = PurePosixPath(change.path).name
    if change.status != "added" or is_test_file(change.path):
        return None
    if _SCRATCH.search(name) and not _referenced(change, others, task):
        return ReviewFlag(UNREFERENCED, change.path, "new file that looks like a debug script or scratch output")
    if _DOCS.search(name) or name in ("__init__.py", "py.typed", ".gitignore", ".gitkeep") or _referenced(change, others, task):
        return None
    return ReviewFlag(UNREFERENCED, change.path, "new file that nothing in the change or the task refers to")


def _size_flags(change: FileChange) -> list[ReviewFlag]:
    if change.status == "deleted":
        return []
    if change.binary:
        size = f" ({change.size:,} bytes)" if change.size is not None else ""
        kind = LARGE if change.size is not None and change.size > LARGE_BYTES else BINARY
        return [ReviewFlag(kind, change.path, f"binary file {'added' if change.status == 'added' else 'changed'}{size}")]
    added = len(change.added)
    if added > LARGE_LINES:
        return [ReviewFlag(LARGE, change.path, f"{added:,} lines added")]
    return []


def review_diff(diff: str, task: str, *, patch: str = "") -> list[ReviewFlag]:
    """Flags on a job's diff, most serious first. ``patch`` (the --binary patch) gives binary files' sizes."""
    changes = parse_diff(diff)
    sizes = {c.path: c.size for c in parse_diff(patch) if c.binary and c.size is not None} if patch else {}
    intent = task_intent(task)
    flags: list[ReviewFlag] = []
    generated: dict[str, int] = {}
    real = []
    for change in changes:
        root = generated_root(change.path)
        if root:
            generated[root] = generated.get(root, 0) + 1
            continue
        change.size = sizes.get(change.path, change.size)
        real.append(change)
    for root, count in generated.items():
        flags.append(ReviewFlag(GENERATED, root, f"{count} file{'s' if count != 1 else ''} of an environment or build "
                                                 "output, not part of the work"))
    for change in real:
        name = PurePosixPath(change.path).name
        if is_test_file(change.path):
            flags += _test_flags(change, intent)
        if name in LOCKFILES and not intent.dependencies:
            flags.append(ReviewFlag(LOCKFILE, change.path, f"lockfile {change.status}, though the task asked for no "
                                                            "dependency change"))
        flags += _size_flags(change)
        unreferenced = _unreferenced_flag(change, real, task)
        if unreferenced:
            flags.append(unreferenced)
        formatting = None if intent.formatting else _formatting_flag(change)
        if formatting:
            flags.append(formatting)
    return sorted(flags, key=lambda f: ORDER.index(f.kind))


def tampered_tests(flags: Sequence[ReviewFlag | dict]) -> list[str]:
    """Test files whose change makes a passing run mean less (deleted, weakened, rewritten)."""
    out = []
    for flag in flags:
        d = flag.as_dict() if isinstance(flag, ReviewFlag) else flag
        if d["kind"] in TEST_TAMPERING and d["path"] not in out:
            out.append(d["path"])
    return out
