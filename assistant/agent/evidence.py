"""The job's log as evidence: which commands ran in which order, which of them were test runs, which
edited files, and whether a test run passed.

Everything here works on plain data (the stored log chunks, in the order they were logged), never on
the workspace or the sandbox, so the checks run the same wherever the workspace lives.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

APPLY_PATCH = "apply_patch"


@dataclass(frozen=True)
class LogRecord:
    """One logged command as the checks see it."""
    chunk_id: str
    order: int                 # position in the job's log, 0 first
    phase: str                 # "setup" | "agent"
    command: str
    exit_code: int | None
    timed_out: bool = False
    line_count: int = 0
    text: str = ""


def records_from_chunks(chunks: Iterable) -> list[LogRecord]:
    """LogChunk rows (in logged order) as LogRecords."""
    return [LogRecord(c.id, i, c.phase or "agent", c.command or "", c.exit_code, bool(c.timed_out),
                      int(c.line_count or 0), c.text or "")
            for i, c in enumerate(chunks)]


# ---------------------------------------------------------------------------------------------- parsing
_REDIRECTS = {">", ">>", ">|", "&>", "&>>", ">&"}


@dataclass(frozen=True)
class Segment:
    """One simple command of a command line, with how it was joined to the one before it."""
    words: tuple[str, ...]
    joined_by: str             # "" for the first, else "&&", "|", ";" …
    writes_to: tuple[str, ...]  # files its output redirections write


def _tokens(command: str) -> list[str]:
    lexer = shlex.shlex(command.replace("\\\n", " "), posix=True, punctuation_chars=";&|<>\n")
    lexer.whitespace = " \t\r"   # newlines separate commands, like ';'
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes: plain words are good enough for recognising a runner
        return command.replace("\n", " ; ").split()


def _separator(token: str) -> str | None:
    """'&&', '|', ';' … for a token that joins commands (newlines read as ';'), else None."""
    if token and set(token) <= set(";&|\n"):
        return token.strip("\n") or ";"
    return None


def segments(command: str) -> list[Segment]:
    out: list[Segment] = []
    words: list[str] = []
    writes: list[str] = []
    joined = ""
    tokens = _tokens(command)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.isdigit() and i + 1 < len(tokens) and tokens[i + 1] in _REDIRECTS:
            i += 1                                      # the fd number of 2>file
            continue
        separator = _separator(tok)
        if separator is not None:
            if words:
                out.append(Segment(tuple(words), joined, tuple(writes)))
            words, writes, joined = [], [], separator
        elif tok in _REDIRECTS:
            target = tokens[i + 1] if i + 1 < len(tokens) else ""
            if not (tok == ">&" and target.isdigit()):  # 2>&1 duplicates a descriptor, it writes no file
                writes.append(target)
            i += 1
        elif tok in ("<", "<<", "<<<", "<<-"):
            i += 1                                      # the input file or the heredoc word
        else:
            words.append(tok)
        i += 1
    if words:
        out.append(Segment(tuple(words), joined, tuple(writes)))
    return out


_WRAPPERS = {"time", "nice", "nohup", "command", "exec", "xvfb-run", "stdbuf", "sudo", "npx", "pnpx", "bunx"}
_RUN_WRAPPERS = {("uv", "run"), ("poetry", "run"), ("pipenv", "run"), ("hatch", "run"), ("pdm", "run"),
                 ("rye", "run"), ("bundle", "exec"), ("conda", "run")}
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")


def program_words(words: Sequence[str]) -> list[str]:
    """The words that say what runs: env assignments, wrappers (timeout, uv run, python -m) and paths stripped."""
    w = list(words)
    changed = True
    while w and changed:
        changed = False
        w[0] = w[0].rsplit("/", 1)[-1]
        if _ENV_ASSIGNMENT.match(w[0]) or w[0] == "env":
            w, changed = w[1:], True
        elif w[0] in _WRAPPERS:
            w, changed = w[1:], True
        elif w[0] == "timeout":
            w = w[1:]
            while w and w[0].startswith("-"):
                w = w[1:]
            w, changed = w[1:], True                   # the duration
        elif len(w) > 1 and (w[0], w[1]) in _RUN_WRAPPERS:
            w, changed = w[2:], True
            while w and w[0].startswith("-"):
                w = w[1:]
        elif _PYTHON.match(w[0]):
            rest = w[1:]
            while rest and rest[0].startswith("-") and rest[0] != "-m":
                rest = rest[1:]
            if len(rest) > 1 and rest[0] == "-m":
                w, changed = rest[1:], True
    return w


# ---------------------------------------------------------------------------------------------- tests
_RUNNERS = {"pytest", "py.test", "unittest", "nose2", "tox", "nox", "jest", "vitest", "mocha", "rspec", "phpunit",
            "ctest", "trial", "green", "ward", "hypothesis"}
_SUBCOMMAND_TESTS = {
    "npm": {"test", "t", "tst"}, "yarn": {"test"}, "pnpm": {"test", "t"}, "bun": {"test"},
    "go": {"test"}, "cargo": {"test", "nextest"}, "make": {"test", "tests", "check"}, "mvn": {"test", "verify"},
    "gradle": {"test", "check"}, "./gradlew": {"test", "check"}, "gradlew": {"test", "check"},
    "dotnet": {"test"}, "mix": {"test"}, "swift": {"test"}, "deno": {"test"}, "django-admin": {"test"},
    "manage.py": {"test"}, "setup.py": {"test"},
}
_TEST_SCRIPT = re.compile(r"^(test_\w*|\w*_test|tests|runtests|run_tests)\.py$")
_RUN_SCRIPT = {"npm", "yarn", "pnpm", "bun"}          # npm run test, yarn run test:unit
# Words an AGENTS.md puts in backticks that are no checks of the work (so `ls` named there is no test).
_NOT_CHECKS = {"cd", "ls", "cat", "echo", "git", "grep", "rg", "find", "head", "tail", "sed", "awk", "pip", "pip3",
               "apt", "apt-get", "cp", "mv", "rm", "mkdir", "touch", "less", "more", "pwd", "export", "source"}


def _is_runner(words: Sequence[str]) -> bool:
    w = program_words(words)
    if not w:
        return False
    prog = w[0]
    if prog in _RUNNERS or _TEST_SCRIPT.match(prog):
        return True
    if _PYTHON.match(prog):
        script = w[1].rsplit("/", 1)[-1] if len(w) > 1 else ""
        if script in ("manage.py", "setup.py"):
            return "test" in w[2:3]
        return bool(_TEST_SCRIPT.match(script))
    if prog in ("runtests", "run-tests"):
        return True
    if prog in _RUN_SCRIPT and len(w) > 2 and w[1] == "run" and w[2].split(":")[0] in ("test", "tests", "check"):
        return True
    subs = _SUBCOMMAND_TESTS.get(prog)
    return bool(subs) and len(w) > 1 and next((x for x in w[1:] if not x.startswith("-")), "") in subs


def normalise(command: str) -> str:
    """A command line as comparable words: output plumbing (2>&1, | tail) and leading `cd x &&` dropped."""
    segs = [s for s in segments(command) if s.joined_by != "|"]
    segs = [s for s in segs if program_words(s.words)[:1] != ["cd"]]
    return " ; ".join(filter(None, (" ".join(program_words(s.words)) for s in segs)))


def test_key(command: str) -> str:
    """What a test command runs, for telling reruns apart: its runner segments only (`echo x; cd y && pytest -q`
    is `pytest -q`), or the whole normalised command for commands AGENTS.md names."""
    runners = [" ".join(program_words(s.words)) for s in segments(command) if _is_runner(s.words)]
    return " ; ".join(runners) if runners else normalise(command)


def named_checks(commands: Iterable[str]) -> tuple[str, ...]:
    """The commands an AGENTS.md names that are checks of the work (not `ls`, `cd` or `git`)."""
    out = []
    for command in commands:
        norm = normalise(command)
        if norm and norm.split()[0] not in _NOT_CHECKS:
            out.append(norm)
    return tuple(out)


def is_test_command(command: str, named: Sequence[str] = ()) -> bool:
    """A run of a test suite: a common runner anywhere in the command line, or a command AGENTS.md names."""
    if command == APPLY_PATCH:
        return False
    if any(_is_runner(s.words) for s in segments(command)):
        return True
    norm = normalise(command)
    checks = named_checks(named)
    return any(norm == c or norm.startswith(c + " ") for c in checks)


# ---------------------------------------------------------------------------------------------- edits
_EDITORS = {"tee", "mv", "cp", "rm", "touch", "patch", "truncate", "install", "ln", "dd", "rmdir", "unzip", "tar",
            "chmod", "rsync", "2to3", "black", "ruff", "isort", "autopep8", "prettier", "gofmt", "rustfmt", "yapf"}
_GIT_EDITS = {"apply", "checkout", "restore", "reset", "stash", "mv", "rm", "am", "cherry-pick", "merge", "rebase",
              "pull", "switch", "revert", "clean"}
_PY_WRITES = re.compile(r"write_text|write_bytes|\.write\(|open\([^)]*['\"][wa]b?\+?['\"]|shutil\.|os\.(remove|rename|replace|unlink)")
_HARMLESS_TARGETS = ("/dev/null", "/dev/stdout", "/dev/stderr", "/tmp/", "/proc/")


def _segment_edits(seg: Segment) -> bool:
    w = program_words(seg.words)
    if not w:
        return False
    prog = w[0]
    if any(t and not t.startswith(_HARMLESS_TARGETS) for t in seg.writes_to) and not _is_runner(seg.words):
        return True
    if prog == "tee":  # tee /tmp/log keeps a copy of the output outside the repository
        return any(not a.startswith("-") and not a.startswith(_HARMLESS_TARGETS) for a in w[1:])
    if prog in _EDITORS:
        return not (prog in ("black", "ruff", "isort", "prettier") and any(a in w for a in ("--check", "--diff", "check")))
    if prog in ("sed", "perl") and any(a == "-i" or a.startswith("-i") or a.startswith("--in-place") for a in w[1:]):
        return True
    if prog == "git" and len(w) > 1 and next((x for x in w[1:] if not x.startswith("-")), "") in _GIT_EDITS:
        return True
    if _PYTHON.match(prog) and "-c" in w:
        return bool(_PY_WRITES.search(" ".join(w)))
    return False


def is_edit(record: LogRecord) -> bool:
    """A logged command that changed files: an applied patch, or a shell command that writes (sed -i, >, mv, git checkout …).
    Shell edits count whatever their exit code, since a failing command line may have written before it failed."""
    if record.phase != "agent":
        return False
    if record.command == APPLY_PATCH:
        return record.exit_code == 0
    return any(_segment_edits(s) for s in segments(record.command))


def last_edit(records: Sequence[LogRecord]) -> LogRecord | None:
    return next((r for r in reversed(records) if is_edit(r)), None)


# ---------------------------------------------------------------------------------------------- verdicts
_PYTEST_SUMMARY = re.compile(r"^=+ .*\b\d+ (passed|failed|errors?|skipped|xfailed|xpassed|deselected)\b.* =+$|"
                             r"^\d+ (passed|failed|errors?|skipped)\b.* in [\d.]+s", re.M)
_FAIL_WORDS = re.compile(r"\b\d+ (failed|errors?)\b")
_UNITTEST = re.compile(r"^(OK|FAILED \()", re.M)
_GO = re.compile(r"^(ok|FAIL)\s", re.M)
_CARGO = re.compile(r"^test result: (ok|FAILED)", re.M)


def _runner_verdict(text: str) -> bool | None:
    """What the runner's own summary says (pass True / fail False), or None when there is none to read."""
    summary = [m.group(0) for m in _PYTEST_SUMMARY.finditer(text)]
    if summary:
        return not _FAIL_WORDS.search(summary[-1])
    verdicts = _UNITTEST.findall(text) or _CARGO.findall(text)
    if verdicts:
        return verdicts[-1] in ("OK", "ok")
    go = _GO.findall(text)
    if go:
        return "FAIL" not in go
    return None


def _piped_test(command: str) -> bool:
    """A test run whose exit code is that of a later pipe stage (`pytest | tail`), unless pipefail is on."""
    if "pipefail" in command:
        return False
    segs = segments(command)
    return any(_is_runner(s.words) for s in segs[:-1]) and segs[-1].joined_by in ("|", "|&")


@dataclass(frozen=True)
class Verdict:
    passed: bool
    note: str = ""     # why the exit code was not taken at its word


def verdict(record: LogRecord) -> Verdict:
    """Did this run pass? The exit code, except where a pipe hides it: then the runner's own summary line."""
    if record.timed_out:
        return Verdict(False, "timed out")
    if _piped_test(record.command):
        said = _runner_verdict(record.text)
        if said is not None:
            return Verdict(said, f"its runner's summary line says it {'passed' if said else 'failed'}; "
                                 f"exit code {record.exit_code} is the pipe's")
        if record.exit_code == 0:
            return Verdict(False, "exit code 0 is the pipe's, and the output shows no test summary")
    return Verdict(record.exit_code == 0)
