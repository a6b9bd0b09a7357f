"""Where a failure points in the repository: file:line places read from test output (tracebacks, runner
summaries, compiler messages) and identifiers (from the task and the failure) matched against definitions.

Pure functions over text that came out of the sandbox as data (test output, a file list, grep output): the
host reads them, it never runs anything from the workspace. Weak models cannot navigate a repository, so the
harness does it for them; a strong model gets the same head start for free.
"""
from __future__ import annotations

import keyword
import posixpath
import re
from dataclasses import dataclass

from ..sandbox.base import WORKSPACE

SOURCE_SUFFIXES = (".py", ".js", ".mjs", ".cjs", ".ts", ".tsx", ".jsx", ".go", ".rs", ".rb", ".java", ".kt", ".c",
                   ".h", ".cc", ".cpp", ".hpp", ".cs", ".php", ".swift", ".scala", ".sh", ".lua", ".ex", ".exs")

# Python tracebacks; "path:line" as pytest, compilers, node and go print it.
_PY_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
_PATH_LINE = re.compile(r"(?<![\w/.-])((?:/|\.{0,2}/)?(?:[\w.-]+/)*[\w.-]+\.[A-Za-z]{1,5}):(\d+)")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
_FILE_NAME = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.[A-Za-z]{1,5})\b")
_TEST_PATH = re.compile(r"(^|/)(tests?|spec|__tests__)/|(^|/)test_[^/]*$|_test\.[a-z]+$|\.(test|spec)\.[a-z]+$|"
                        r"(^|/)conftest\.py$")

# Words of a task or a failure that name no code even when something happens to be defined with that name.
_STOPWORDS = set(keyword.kwlist) | {
    "the", "and", "for", "not", "but", "with", "that", "this", "from", "into", "when", "then", "than", "should",
    "would", "could", "must", "does", "did", "was", "were", "are", "has", "have", "had", "its", "it's", "our",
    "your", "you", "fix", "fixes", "fixed", "bug", "bugs", "test", "tests", "testing", "failing", "fails", "fail",
    "failed", "error", "errors", "make", "makes", "add", "adds", "added", "new", "function", "functions", "method",
    "class", "file", "files", "code", "line", "lines", "returns", "return", "value", "values", "call", "calls",
    "called", "use", "uses", "used", "wrong", "right", "instead", "also", "please", "can", "will", "all", "any",
    "one", "two", "get", "set", "there", "here", "what", "which", "who", "how", "why", "where", "need", "needs",
    "traceback", "most", "recent", "last", "assertionerror", "assert", "self", "true", "false", "none", "ran",
    "python", "python3", "unittest", "pytest", "module", "main", "expected", "actual", "got", "equal",
    "assertequal", "asserttrue", "assertfalse", "ok", "failures", "passed", "string", "number", "list", "dict",
    "int", "str", "float", "bool", "print", "name", "names", "work", "works", "working", "issue", "problem",
    "repository", "repo", "workspace", "about", "after", "before", "because", "only", "same", "other", "every",
}


@dataclass(frozen=True)
class Place:
    """A line worth showing, and why (for the progress message and the ranking)."""
    path: str
    line: int
    why: str              # "traceback" | "failure" | "definition" | "named" | "overview"


def is_test_path(path: str) -> bool:
    return bool(_TEST_PATH.search(path))


def workspace_relative(raw: str) -> str | None:
    """A path as the repository names it, or None for one outside the workspace."""
    path = raw.strip()
    if path.startswith(WORKSPACE + "/"):
        path = path[len(WORKSPACE) + 1:]
    elif path.startswith("/"):
        return None
    path = posixpath.normpath(path)
    if path.startswith("..") or path == ".":
        return None
    return path


def places_in_output(output: str, files: set[str]) -> list[Place]:
    """file:line places the output names, for files of the repository, deepest traceback frame first.

    A traceback lists the outermost frame first; the place that raised is the last one, and the code under
    test usually sits below the test's own frame, so the order is reversed."""
    found: list[Place] = []
    seen: set[tuple[str, int]] = set()

    def add(raw: str, line: str, why: str) -> None:
        path = workspace_relative(raw)
        if path is None or path not in files:
            return
        key = (path, int(line))
        if key not in seen:
            seen.add(key)
            found.append(Place(path, int(line), why))
    frames = list(_PY_FRAME.finditer(output))
    for match in reversed(frames):
        add(match.group(1), match.group(2), "traceback")
    for match in _PATH_LINE.finditer(output):
        add(match.group(1), match.group(2), "failure")
    # The code under test before the tests that call it: the fix is more often there.
    return sorted(found, key=lambda p: is_test_path(p.path))


_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_BUILTINS = {"print", "len", "str", "int", "float", "bool", "list", "dict", "set", "tuple", "range", "isinstance",
             "super", "open", "repr", "type", "sorted", "min", "max", "sum", "abs", "getattr", "setattr", "format",
             "main", "require", "describe", "expect", "it"}


def identifiers(*texts: str, limit: int = 40) -> list[str]:
    """Names that may be defined in the code: called names first (`add(2, 3)` names `add` even though "add" is
    also an English word), then code-looking words (snake_case, camelCase), then other words that are no
    plain English or keywords."""
    calls: list[str] = []
    words: list[str] = []
    for text in texts:
        for name in _CALL.findall(text or ""):
            if (name not in calls and not keyword.iskeyword(name) and name not in _BUILTINS
                    and not name.startswith("assert") and len(name) > 1):
                calls.append(name)
        for word in _IDENTIFIER.findall(text or ""):
            if word.lower() in _STOPWORDS or word in words or word.isupper() and len(word) < 4:
                continue
            words.append(word)
    words.sort(key=lambda w: not ("_" in w.strip("_") or (w[0].islower() and any(c.isupper() for c in w))))
    return list(dict.fromkeys(calls + words))[:limit]


def definition_pattern(names: list[str]) -> str:
    """An extended regular expression (grep -E) for the definition lines of these names in common languages."""
    alternatives = "|".join(re.escape(n) for n in names)
    return (rf"^\s*((async\s+)?def|class|function|func|fn|pub fn|const|let|var|export (default )?(function|class|const))\s+"
            rf"({alternatives})\b|^\s*({alternatives})\s*=")


def places_in_grep(output: str, files: set[str]) -> list[Place]:
    """Definitions found by `grep -rnE` (path:line:text lines), code before tests."""
    found = []
    for line in output.splitlines():
        parts = line.split(":", 2)
        if len(parts) < 3 or not parts[1].isdigit():
            continue
        path = workspace_relative(parts[0])
        if path is not None and path in files:
            found.append(Place(path, int(parts[1]), "definition"))
    return sorted(found, key=lambda p: is_test_path(p.path))


def named_files(task: str, files: set[str]) -> list[Place]:
    """Files the task names, by path or by bare file name."""
    by_name: dict[str, list[str]] = {}
    for path in files:
        by_name.setdefault(posixpath.basename(path), []).append(path)
    found: list[Place] = []
    for match in _FILE_NAME.finditer(task or ""):
        raw = match.group(1)
        path = workspace_relative(raw)
        candidates = [path] if path in files else by_name.get(posixpath.basename(raw), [])
        for candidate in candidates[:3]:
            if all(p.path != candidate for p in found):
                found.append(Place(candidate, 1, "named"))
    return found


def source_files(files: set[str]) -> list[str]:
    """The repository's code files, code before tests, shallow before deep."""
    code = [f for f in files if f.endswith(SOURCE_SUFFIXES) and not posixpath.basename(f).startswith(".")]
    return sorted(code, key=lambda f: (is_test_path(f), f.count("/"), f))


# ---------------------------------------------------------------------------------------------- windows
def enclosing_block(lines: list[str], line: int, reach: int = 40) -> tuple[int, int]:
    """1-based (first, last) of the definition around `line`: up to the nearest less indented def/class/function
    line, down to where the indentation returns to it. Languages with braces get the same by indentation."""
    index = min(max(line, 1), len(lines)) - 1
    start = index
    here = _indent(lines[index]) if lines[index].strip() else 10**6
    for i in range(index, max(-1, index - reach), -1):
        text = lines[i]
        if text.strip() and _indent(text) <= here and re.match(r"\s*(async\s+def|def|class|function|func|fn|pub fn|"
                                                               r"export|public|private|static)\b", text):
            start = i
            break
    else:
        start = max(0, index - 5)
    base = _indent(lines[start])
    end = max(index, start)
    for i in range(start + 1, min(len(lines), start + 1 + 2 * reach)):
        text = lines[i]
        if text.strip() and _indent(text) <= base and not text.strip().startswith((")", "]", "}")):
            break
        end = i
    return start + 1, end + 1


def _indent(text: str) -> int:
    return len(text) - len(text.lstrip(" \t"))


def windows_for(places: list[Place], texts: dict[str, str], *, budget: int = 160, whole_file_under: int = 70,
                ) -> dict[str, list[tuple[int, int]]]:
    """Line ranges to show per file, in the order of the places, within a budget of lines.

    A small file is shown whole (a weak model edits best what it sees entirely); a larger one shows the block
    around each place. Overlapping or adjacent ranges merge."""
    chosen: dict[str, list[tuple[int, int]]] = {}
    used = 0
    for place in places:
        text = texts.get(place.path)
        if text is None:
            continue
        lines = text.splitlines()
        if not lines:
            span = (1, 1)
        elif len(lines) <= whole_file_under:
            span = (1, len(lines))
        elif place.why == "named" and place.line == 1:
            span = (1, min(len(lines), 40))
        else:
            first, last = enclosing_block(lines, place.line)
            first, last = max(1, min(first, place.line - 3)), min(len(lines), max(last, place.line + 3))
            span = (first, min(last, first + 59))
        size = span[1] - span[0] + 1
        if used + size > budget and used:
            continue
        ranges = chosen.setdefault(place.path, [])
        ranges.append(span)
        ranges.sort()
        merged: list[tuple[int, int]] = []
        for first, last in ranges:
            if merged and first <= merged[-1][1] + 2:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        chosen[place.path] = merged
        used = sum(b - a + 1 for spans in chosen.values() for a, b in spans)
    return chosen


def render_window(path: str, text: str, first: int, last: int) -> str:
    lines = text.splitlines()
    width = len(str(last))
    body = "\n".join(f"{i:>{width}}| {lines[i - 1]}" for i in range(first, min(last, len(lines)) + 1))
    whole = first == 1 and last >= len(lines)
    head = f"### {path}" + ("" if whole else f" (lines {first}-{min(last, len(lines))} of {len(lines)})")
    return head + "\n" + (body or "(empty file)")
