"""Small, checkable edits (replace a line range, replace a unique snippet, insert lines, create a file) turned
into the new text of a file, and that change turned into an apply_patch patch for the sandbox's patch engine.

The host computes on text that came out of the sandbox as data; the file is written by the patch engine
inside the sandbox, as every other edit is. Each failure says what to send instead, in words a small model
can act on.
"""
from __future__ import annotations

import re


class EditError(ValueError):
    """An edit that cannot apply; the message tells the model what to do instead."""


def _lines(text: str) -> list[str]:
    return text.splitlines()


def _join(lines: list[str], trailing_newline: bool) -> str:
    return "\n".join(lines) + ("\n" if trailing_newline and lines else "")


def _indent_of(line: str) -> str:
    return line[:len(line) - len(line.lstrip(" \t"))]


def _reindent(new: list[str], old_first: str) -> list[str]:
    """A small model often drops the indentation of a snippet it copies: give the new lines the old first
    line's indentation when its own first line has none."""
    want = _indent_of(old_first)
    if not want or not new or _indent_of(new[0]) or not new[0].strip():
        return new
    return [want + line if line.strip() else line for line in new]


def new_lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").split("\n") if text != "" else []


def _strip_trailing_empty(lines: list[str]) -> list[str]:
    while lines and lines[-1] == "":
        lines = lines[:-1]
    return lines


def replace_lines(before: str, start: int, end: int, text: str) -> str:
    lines = _lines(before)
    if not lines:
        raise EditError("the file is empty; use insert_lines with after 0")
    if start < 1 or end < start or start > len(lines):
        raise EditError(f"lines {start}-{end} are not in the file (it has {len(lines)} lines; start <= end, "
                        "both from the numbers shown)")
    end = min(end, len(lines))
    replacement = _reindent(_strip_trailing_empty(new_lines(text)), lines[start - 1])
    return _join(lines[:start - 1] + replacement + lines[end:], before.endswith("\n") or not before)


def insert_lines(before: str, after: int, text: str) -> str:
    lines = _lines(before)
    if after < 0 or after > len(lines):
        raise EditError(f"after must be between 0 and {len(lines)} (the file's last line)")
    added = _strip_trailing_empty(new_lines(text))
    if not added:
        raise EditError("there is nothing to insert: text is empty")
    return _join(lines[:after] + added + lines[after:], True)


def replace_snippet(before: str, old: str, new: str) -> str:
    """Replace the one place `old` occurs.

    A snippet within one line is matched without its surrounding whitespace and replaced in place (the line
    keeps its indentation); a snippet of several lines is matched line by line, exactly or else with other
    indentation or trailing spaces, and the new lines take the old first line's indentation when they have none."""
    if not old.strip():
        raise EditError("old is empty: copy the exact lines to replace from the code shown")
    lines = _lines(before)
    core = old.strip()
    replacement = new.strip("\n")
    if "\n" not in core:
        hits = [(i, line.count(core)) for i, line in enumerate(lines) if core in line]
        count = sum(n for _i, n in hits)
        if count == 1:
            index = hits[0][0]
            if "\n" not in replacement.strip():
                lines[index] = lines[index].replace(core, replacement.strip(), 1)
                return _join(lines, before.endswith("\n"))
            # one line becomes several: the whole line is replaced, as replace_lines would
            return replace_lines(before, index + 1, index + 1, replacement)
        if count > 1:
            raise EditError(f"old occurs {count} times; include more of the surrounding lines so it occurs once, "
                            "or use replace_lines with line numbers")
        raise EditError("old occurs nowhere in the file; copy it exactly from the code shown, or use replace_lines "
                        "with line numbers")
    wanted = [line.strip() for line in _strip_trailing_empty(new_lines(old.strip("\n")))]
    hits = [i for i in range(len(lines) - len(wanted) + 1)
            if [line.strip() for line in lines[i:i + len(wanted)]] == wanted]
    if len(hits) != 1:
        where = "nowhere" if not hits else f"{len(hits)} times"
        raise EditError(f"old occurs {where} in the file; copy it exactly from the code shown, or use replace_lines "
                        "with line numbers")
    first = hits[0]
    snippet = _strip_trailing_empty(new_lines(old.strip("\n")))
    matched = lines[first:first + len(wanted)]
    added = _strip_trailing_empty(new_lines(replacement))
    if snippet != matched:
        added = _align(added, snippet, matched)
    return _join(lines[:first] + added + lines[first + len(wanted):], before.endswith("\n"))


def _align(added: list[str], snippet: list[str], matched: list[str]) -> list[str]:
    """New lines indented to fit the file when the snippet matched with other indentation: shifted by the
    snippet's constant offset, or (a model that flattened its snippet) line by line from the matched lines."""
    offsets = {len(_indent_of(f)) - len(_indent_of(s)) for f, s in zip(matched, snippet) if s.strip()}
    if len(offsets) == 1:
        shift = offsets.pop()
        return [" " * max(0, len(_indent_of(line)) + shift) + line.strip() if line.strip() else ""
                for line in added]
    old_text = [s.strip() for s in snippet]
    out = []
    for k, line in enumerate(added):
        text = line.strip()
        if not text:
            out.append("")
            continue
        twin = old_text.index(text) if text in old_text else min(k, len(matched) - 1)
        out.append(_indent_of(matched[twin]) + text)
    return out


# ---------------------------------------------------------------------------------------------- patches
def changed_span(before: str, after: str) -> tuple[int, int, int, int]:
    """(first, old_last, new_first, new_last) 1-based lines of the one block that differs (empty ranges have
    last = first - 1)."""
    a, b = _lines(before), _lines(after)
    prefix = 0
    while prefix < min(len(a), len(b)) and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(a), len(b)) - prefix and a[-1 - suffix] == b[-1 - suffix]:
        suffix += 1
    return prefix + 1, len(a) - suffix, prefix + 1, len(b) - suffix


def _occurrences(lines: list[str], block: list[str]) -> int:
    if not block:
        return 0
    return sum(1 for i in range(len(lines) - len(block) + 1) if lines[i:i + len(block)] == block)


def update_patch(path: str, before: str, after: str) -> str:
    """An `*** Update File` patch that turns `before` into `after`: one chunk with as much context as it takes
    for its old lines to occur exactly once in the file (the engine refuses an ambiguous chunk)."""
    if before == after:
        raise EditError("the edit changes nothing: the new text is the same as the old")
    a, b = _lines(before), _lines(after)
    first, old_last, _new_first, new_last = changed_span(before, after)
    lo, hi = first - 1, old_last          # a[lo:hi] is replaced by b[lo:new_last]
    context = 2
    while True:
        top, bottom = max(0, lo - context), min(len(a), hi + context)
        old_block = a[top:bottom]
        if (top == 0 and bottom == len(a)) or _occurrences(a, old_block) == 1:
            break
        context += 2
    body = [f" {line}" for line in a[top:lo]] + [f"-{line}" for line in a[lo:hi]] + \
           [f"+{line}" for line in b[lo:new_last]] + [f" {line}" for line in a[hi:bottom]]
    end_of_file = bottom == len(a)
    return "\n".join(["*** Begin Patch", f"*** Update File: {path}", "@@", *body,
                      *(["*** End of File"] if end_of_file else []), "*** End Patch"])


def add_patch(path: str, text: str) -> str:
    return "\n".join(["*** Begin Patch", f"*** Add File: {path}", *(f"+{line}" for line in _lines(text)),
                      "*** End Patch"])


def delete_patch(path: str) -> str:
    return "\n".join(["*** Begin Patch", f"*** Delete File: {path}", "*** End Patch"])


_SAFE_PATH = re.compile(r"^[\w.@+-][\w.@+/ -]*$")


def clean_path(raw: str) -> str:
    """A workspace-relative path from what a model wrote (it likes ./x and /workspace/x)."""
    path = (raw or "").strip().strip("`'\"")
    for prefix in ("/workspace/", "./"):
        if path.startswith(prefix):
            path = path[len(prefix):]
    if not path or path.startswith("/") or ".." in path.split("/") or not _SAFE_PATH.match(path):
        raise EditError(f"{raw!r} is not a path inside the repository; use the path shown after ### (e.g. src/app.py)")
    return path
