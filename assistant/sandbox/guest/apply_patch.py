"""The Codex `apply_patch` format: parse a patch, then apply it to a workspace atomically.

Grammar (as Codex defines it, with Codex's leniencies)::

    *** Begin Patch
    *** Add File: path          followed by lines starting with "+"
    *** Delete File: path
    *** Update File: path
    *** Move to: new/path       optional, right after Update File
    @@ optional anchor line     one or more, stacked anchors narrow step by step
     context line  / -removed line / +added line
    *** End of File             optional, the chunk's old lines end the file
    *** End Patch

Decisions where Codex is silent or where this module deliberately differs:

- Add File on a path that already holds a file replaces it, as Codex does; the result reports
  it as modified because the file existed.  Move to an existing file replaces it, as Codex does.
- Either every hunk applies or nothing changes (Codex writes as it goes).
- Context that matches more than one place is refused unless an ``@@`` anchor picked the place.
- An update whose only change is ``*** Move to:`` is a rename.
- A pure addition chunk with an anchor is inserted right after the anchor line; without one it
  is appended to the end of the file (as Codex does).
- Anchors also match a line that merely starts with them (``@@ def run`` finds ``def run(self):``)
  once no whole-line match exists; unified-diff headers (``@@ -3,4 +3,5 @@ ...``) are accepted
  and their line numbers ignored.
- Line endings follow the file (CRLF stays CRLF); a missing final newline stays missing unless
  the patch edits the end of the file.  New files get LF.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Union

BEGIN_PATCH = "*** Begin Patch"
END_PATCH = "*** End Patch"
ADD_FILE = "*** Add File:"
DELETE_FILE = "*** Delete File:"
UPDATE_FILE = "*** Update File:"
MOVE_TO = "*** Move to:"
END_OF_FILE = "*** End of File"

_FILE_MARKERS = (ADD_FILE, DELETE_FILE, UPDATE_FILE)
_HEREDOC_OPENING = re.compile(r"""^(?:apply_patch\s+)?<<-?\s*(['"]?)([A-Za-z_][A-Za-z0-9_]*)\1\s*$""")
_UNIFIED_DIFF_HEADER = re.compile(r"^@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@ ?(.*)$")
_NOTHING_CHANGED = "No file was changed."


class PatchError(Exception):
    """A patch that was refused; the message tells the model what failed and what to send instead."""


@dataclass(frozen=True)
class AddFile:
    path: str
    contents: str


@dataclass(frozen=True)
class DeleteFile:
    path: str


@dataclass(frozen=True)
class UpdateChunk:
    anchors: tuple[str, ...]
    old_lines: tuple[str, ...]
    new_lines: tuple[str, ...]
    is_end_of_file: bool = False
    # For each new line, the index of the old line it repeats (a context line), else None.
    new_line_sources: tuple[int | None, ...] = ()


@dataclass(frozen=True)
class UpdateFile:
    path: str
    move_to: str | None
    chunks: tuple[UpdateChunk, ...]


Hunk = Union[AddFile, DeleteFile, UpdateFile]


@dataclass
class PatchResult:
    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"A {p}" for p in self.added]
        lines += [f"M {p}" for p in self.modified]
        lines += [f"D {p}" for p in self.deleted]
        lines += [f"R {src} -> {dst}" for src, dst in self.moved]
        return "\n".join(lines)


# --------------------------------------------------------------------------- parsing


def parse_patch(text: str) -> list[Hunk]:
    """Parse patch text into hunks, checking syntax and path shape but not the files."""
    if not text or not text.strip():
        raise PatchError(
            "The patch is empty. Send a patch that starts with '*** Begin Patch', "
            "holds at least one Add/Delete/Update File section, and ends with '*** End Patch'."
        )
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    first = 0
    while first < len(lines) and not lines[first].strip():
        first += 1
    last = len(lines)
    while last > first and not lines[last - 1].strip():
        last -= 1
    body, body_line_number = _patch_body(lines[first:last], first + 1)
    hunks = _PatchParser(body, body_line_number).parse()
    if not hunks:
        raise PatchError(
            "The patch has no file sections between '*** Begin Patch' and '*** End Patch'. "
            "Add at least one '*** Add File:', '*** Delete File:' or '*** Update File:' section."
        )
    return hunks


def _patch_body(lines: list[str], first_line_number: int) -> tuple[list[str], int]:
    """Strip the Begin/End markers, also from inside a heredoc or a Markdown fence."""
    if _has_patch_markers(lines):
        return lines[1:-1], first_line_number + 1
    if len(lines) >= 4:
        opening, closing = lines[0].strip(), lines[-1].strip()
        heredoc = _HEREDOC_OPENING.match(opening)
        wrapped = (heredoc is not None and closing == heredoc.group(2)) or (
            opening.startswith("```") and closing == "```"
        )
        if wrapped and _has_patch_markers(lines[1:-1]):
            return lines[2:-2], first_line_number + 2
    if not any(line.strip() == BEGIN_PATCH for line in lines[:2]):
        raise PatchError(
            f"The first line of the patch must be '{BEGIN_PATCH}' (found {lines[0].strip()[:80]!r}). "
            "Send only the patch text, starting with that line."
        )
    raise PatchError(
        f"The last line of the patch must be '{END_PATCH}' (found {lines[-1].strip()[:80]!r}). "
        "The patch may have been cut off; send it again, complete."
    )


def _has_patch_markers(lines: list[str]) -> bool:
    return len(lines) >= 2 and lines[0].strip() == BEGIN_PATCH and lines[-1].strip() == END_PATCH


def _is_section_boundary(line: str) -> bool:
    # An unpadded "***" line ends an update (an unknown one then fails as a file header), but a
    # padded one only when it is a known marker: " ***" is a context line, e.g. a Markdown rule.
    return line.startswith("***") or line.strip().startswith(_FILE_MARKERS + (END_PATCH, MOVE_TO))


def _is_chunk_header(line: str) -> bool:
    # A line " @@ x" is a context line whose text is "@@ x"; only a bare, padded "@@" is a header.
    return line.startswith("@@") or line.strip() == "@@"


def _anchor_of(header: str) -> str | None:
    header = header.strip()
    unified = _UNIFIED_DIFF_HEADER.match(header)
    if unified:
        anchor = unified.group(1)
    else:
        anchor = header[3:] if header.startswith("@@ ") else header[2:]
    return anchor if anchor.strip() else None


class _PatchParser:
    def __init__(self, body: list[str], first_line_number: int) -> None:
        self.lines = body
        self.first_line_number = first_line_number
        self.index = 0

    def line_number(self, index: int | None = None) -> int:
        return self.first_line_number + (self.index if index is None else index)

    def fail(self, message: str, index: int | None = None) -> PatchError:
        return PatchError(f"Invalid patch, line {self.line_number(index)}: {message}")

    def parse(self) -> list[Hunk]:
        hunks: list[Hunk] = []
        while self.index < len(self.lines):
            line = self.lines[self.index]
            stripped = line.strip()
            if not stripped:
                self.index += 1
            elif stripped.startswith(ADD_FILE):
                hunks.append(self.parse_add(stripped))
            elif stripped.startswith(DELETE_FILE):
                hunks.append(DeleteFile(self.path_after(DELETE_FILE, stripped)))
                self.index += 1
            elif stripped.startswith(UPDATE_FILE):
                hunks.append(self.parse_update(stripped))
            else:
                hint = ""
                if hunks and isinstance(hunks[-1], AddFile):
                    hint = (
                        " Every line of an added file must start with '+' "
                        "(a lone '+' for an empty line)."
                    )
                raise self.fail(
                    f"{stripped[:80]!r} is not a valid file header. Each section must start with "
                    f"'{ADD_FILE} path', '{DELETE_FILE} path' or '{UPDATE_FILE} path'.{hint}"
                )
        return hunks

    def path_after(self, marker: str, stripped: str) -> str:
        return _workspace_relative(stripped[len(marker):], self.line_number())

    def parse_add(self, header: str) -> AddFile:
        path = self.path_after(ADD_FILE, header)
        self.index += 1
        content_lines = []
        while self.index < len(self.lines) and self.lines[self.index].startswith("+"):
            content_lines.append(self.lines[self.index][1:])
            self.index += 1
        contents = "".join(f"{line}\n" for line in content_lines)
        return AddFile(path, contents)

    def parse_update(self, header: str) -> UpdateFile:
        path = self.path_after(UPDATE_FILE, header)
        header_index = self.index
        self.index += 1
        move_to = None
        if self.index < len(self.lines) and self.lines[self.index].strip().startswith(MOVE_TO):
            move_to = self.path_after(MOVE_TO, self.lines[self.index].strip())
            self.index += 1
        chunks: list[UpdateChunk] = []
        while self.index < len(self.lines):
            line = self.lines[self.index]
            if not line.strip():
                self.index += 1
                continue
            if _is_section_boundary(line):
                break
            chunks.append(self.parse_chunk(path, first_in_file=not chunks))
        if not chunks and (move_to is None or move_to == path):
            raise self.fail(
                f"the '{UPDATE_FILE} {path}' section has no changes. Follow it with '@@' chunks "
                "of ' ' context, '-' removed and '+' added lines.",
                header_index,
            )
        return UpdateFile(path, None if move_to == path else move_to, tuple(chunks))

    def parse_chunk(self, path: str, first_in_file: bool) -> UpdateChunk:
        anchors: list[str] = []
        saw_header = False
        while self.index < len(self.lines) and _is_chunk_header(self.lines[self.index]):
            saw_header = True
            anchor = _anchor_of(self.lines[self.index])
            if anchor is not None:
                anchors.append(anchor)
            self.index += 1
        if not saw_header and not first_in_file:
            raise self.fail(
                f"unexpected line {self.lines[self.index][:80]!r} in the update of {path}. Every "
                "line of a chunk starts with ' ' (context), '-' (removed) or '+' (added); start a "
                "new chunk with '@@'. An unchanged line needs its leading space even when the "
                "line itself is indented."
            )
        old_lines: list[str] = []
        new_lines: list[str] = []
        sources: list[int | None] = []
        is_end_of_file = False
        start = self.index
        while self.index < len(self.lines):
            line = self.lines[self.index]
            if line.strip() == END_OF_FILE:
                if self.index == start:
                    break
                is_end_of_file = True
                self.index += 1
                break
            if _is_section_boundary(line) or _is_chunk_header(line):
                break
            if line == "" or line[0] == " ":
                sources.append(len(old_lines))
                old_lines.append(line[1:])
                new_lines.append(line[1:])
            elif line[0] == "-":
                old_lines.append(line[1:])
            elif line[0] == "+":
                sources.append(None)
                new_lines.append(line[1:])
            else:
                raise self.fail(
                    f"unexpected line {line[:80]!r} in the update of {path}. Every line of a chunk "
                    "starts with ' ' (context), '-' (removed) or '+' (added). An unchanged line "
                    "needs its leading space even when the line itself is indented."
                )
            self.index += 1
        if self.index == start:
            raise self.fail(
                f"a chunk in the update of {path} has no lines. Follow '@@' with ' ' context, "
                "'-' removed and '+' added lines.",
                start - 1,
            )
        return UpdateChunk(
            tuple(anchors), tuple(old_lines), tuple(new_lines), is_end_of_file, tuple(sources)
        )


def _workspace_relative(raw: str, line_number: int) -> str:
    text = raw.strip()
    where = f"Invalid patch, line {line_number}:"
    if not text:
        raise PatchError(
            f"{where} the file header names no path. Give a path relative to the workspace root."
        )
    if "\x00" in text:
        raise PatchError(f"{where} the path {text!r} contains a NUL character.")
    path = PurePosixPath(text)
    if path.is_absolute() or re.match(r"^[A-Za-z]:[\\/]", text):
        raise PatchError(
            f"{where} the path {text!r} is absolute. Paths must be relative to the workspace "
            "root, e.g. 'src/app.py'."
        )
    parts = [part for part in path.parts if part != "."]
    if ".." in parts:
        raise PatchError(
            f"{where} the path {text!r} contains '..'. Paths must stay inside the workspace; "
            "write them relative to the workspace root without '..'."
        )
    if not parts:
        raise PatchError(f"{where} the path {text!r} names the workspace root, not a file.")
    return "/".join(parts)


# --------------------------------------------------------------------------- locating chunks

_PUNCTUATION = str.maketrans(
    {
        **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),
        **dict.fromkeys("\u2018\u2019\u201a\u201b", "'"),
        **dict.fromkeys("\u201c\u201d\u201e\u201f", '"'),
        **dict.fromkeys(
            "\u00a0\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000", " "
        ),
    }
)


def _punctuation_normalised(line: str) -> str:
    return line.strip().translate(_PUNCTUATION)


# Codex's order of leniency: exact, trailing whitespace, surrounding whitespace, typographic punctuation.
_LEVELS: tuple[Callable[[str], str], ...] = (
    lambda line: line,
    str.rstrip,
    str.strip,
    _punctuation_normalised,
)
_ANCHOR_PREFIX_LEVEL = len(_LEVELS)


class _FileLines:
    """Lines of one file version with per-leniency-level views computed on demand."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self._views: dict[int, list[str]] = {}

    def view(self, level: int) -> list[str]:
        if level not in self._views:
            self._views[level] = [_LEVELS[level](line) for line in self.lines]
        return self._views[level]

    def seek(self, pattern: tuple[str, ...], start: int, max_level: int) -> tuple[int, int] | None:
        """First (index, level) at or after start where pattern matches, strictest level first."""
        size = len(pattern)
        for level in range(min(max_level, len(_LEVELS) - 1) + 1):
            lines = self.view(level)
            wanted = [_LEVELS[level](line) for line in pattern]
            for index in range(start, len(lines) - size + 1):
                if lines[index:index + size] == wanted:
                    return index, level
        return None

    def seek_anchor(self, anchor: str, start: int, max_level: int) -> tuple[int, int] | None:
        found = self.seek((anchor,), start, max_level)
        if found is not None or max_level < _ANCHOR_PREFIX_LEVEL:
            return found
        wanted = _punctuation_normalised(anchor)
        lines = self.view(len(_LEVELS) - 1)
        for index in range(start, len(lines)):
            if lines[index].startswith(wanted):
                return index, _ANCHOR_PREFIX_LEVEL
        return None

    def occurs_anywhere(self, line: str) -> bool:
        return _punctuation_normalised(line) in self.view(len(_LEVELS) - 1)


@dataclass(frozen=True)
class _Placement:
    index: int
    old_count: int
    new_lines: tuple[str, ...]
    anchor_levels: tuple[int, ...]
    old_level: int


def _place_chunk(
    file: _FileLines,
    chunk: UpdateChunk,
    start: int,
    anchor_levels: tuple[int, ...] | None = None,
    old_level: int = len(_LEVELS) - 1,
) -> _Placement | str:
    """Where the chunk applies at or after start, or the reason it applies nowhere."""
    position = start
    anchor_line = None
    used_levels = []
    for number, anchor in enumerate(chunk.anchors):
        limit = _ANCHOR_PREFIX_LEVEL if anchor_levels is None else anchor_levels[number]
        found = file.seek_anchor(anchor, position, limit)
        if found is None:
            after = f" after line {position}" if position else ""
            return f"the anchor line '@@ {anchor}' was not found{after}"
        anchor_line, level = found
        position = anchor_line + 1
        used_levels.append(level)
    levels = tuple(used_levels)
    lines = file.lines
    if not chunk.old_lines:
        at = position if chunk.anchors and not chunk.is_end_of_file else len(lines)
        return _Placement(at, 0, chunk.new_lines, levels, 0)
    # Models often repeat the anchor as the first context line, so the old lines may start on it.
    if anchor_line is not None:
        position = anchor_line
    old, new = chunk.old_lines, chunk.new_lines
    while True:
        if chunk.is_end_of_file and len(old) <= len(lines) - position:
            at_end = file.seek(old, len(lines) - len(old), old_level)
            if at_end is not None:
                return _Placement(at_end[0], len(old), new, levels, at_end[1])
        found = file.seek(old, position, old_level)
        if found is not None:
            return _Placement(found[0], len(old), new, levels, found[1])
        # A blank line typed after the last context line stands for the file's final newline.
        if not old or old[-1] != "":
            return "the expected lines were not found"
        old = old[:-1]
        if new and new[-1] == "":
            new = new[:-1]
        if not old:
            return "the expected lines were not found"


_Replacement = tuple[int, int, tuple[str, ...]]


def _replacements(path: str, lines: list[str], chunks: tuple[UpdateChunk, ...]) -> list[_Replacement]:
    """The (index, removed count, inserted lines) replacements the chunks make, in file order."""
    file = _FileLines(lines)
    replacements = []
    cursor = 0
    for number, chunk in enumerate(chunks, start=1):
        placement = _place_chunk(file, chunk, cursor)
        if isinstance(placement, str):
            raise PatchError(_not_found_message(path, number, len(chunks), chunk, placement, file))
        appended_without_anchor = not chunk.old_lines and not chunk.anchors
        located_at_end = chunk.is_end_of_file and placement.index + placement.old_count == len(lines)
        if not appended_without_anchor and not located_at_end:
            retry_from = placement.index + (1 if placement.old_count else 0)
            again = _place_chunk(
                file, chunk, retry_from, placement.anchor_levels, placement.old_level
            )
            if not isinstance(again, str):
                raise PatchError(_ambiguity_message(path, number, len(chunks), placement, again))
        inserted = _inserted_lines(lines, chunk, placement)
        replacements.append((placement.index, placement.old_count, inserted))
        if not appended_without_anchor:
            cursor = placement.index + placement.old_count
    replacements.sort(key=lambda replacement: replacement[0])
    return replacements


def _inserted_lines(lines: list[str], chunk: UpdateChunk, placement: _Placement) -> tuple[str, ...]:
    # Context lines keep the file's own text: a lenient match must not rewrite their whitespace
    # or punctuation to the patch's version.
    sources = chunk.new_line_sources or (None,) * len(chunk.new_lines)
    return tuple(
        lines[placement.index + source] if source is not None and source < placement.old_count else text
        for text, source in zip(placement.new_lines, sources)
    )


def _chunk_label(number: int, total: int) -> str:
    return f"chunk {number} of {total}" if total > 1 else "the chunk"


def _not_found_message(
    path: str, number: int, total: int, chunk: UpdateChunk, reason: str, file: _FileLines
) -> str:
    expected = "\n".join(f"    {line}" for line in chunk.old_lines) or "    (none)"
    message = f"Could not apply {_chunk_label(number, total)} to {path}: {reason}."
    if chunk.old_lines and reason == "the expected lines were not found":
        message += f" Expected these lines (context and '-' lines), in this order:\n{expected}\n"
        missing = next(
            (line for line in chunk.old_lines if line.strip() and not file.occurs_anywhere(line)), None
        )
        if missing is not None:
            message += f"The line {missing.strip()!r} does not occur anywhere in {path}. "
        else:
            message += f"Each line occurs in {path}, but not in this order"
            message += " after the previous chunk. " if number > 1 else ". "
    message += (
        f"Read the current text of {path} again and resend the patch with context and '-' lines "
        f"copied exactly from it. {_NOTHING_CHANGED}"
    )
    return message


def _ambiguity_message(path: str, number: int, total: int, first: _Placement, second: _Placement) -> str:
    return (
        f"Could not apply {_chunk_label(number, total)} to {path}: its context matches more than "
        f"one place (lines {first.index + 1} and {second.index + 1}), so the intended place is "
        "unclear. Add more unchanged context lines around the change, or an '@@ <line>' anchor "
        "naming the enclosing class or function (stack several '@@' lines to narrow further). "
        f"{_NOTHING_CHANGED}"
    )


# --------------------------------------------------------------------------- text with line endings


@dataclass
class _Text:
    lines: list[str]
    endings: list[str]
    byte_order_mark: bool

    @classmethod
    def parse(cls, text: str) -> "_Text":
        byte_order_mark = text.startswith("\ufeff")
        if byte_order_mark:
            text = text[1:]
        lines, endings = [], []
        pieces = text.split("\n")
        for piece in pieces[:-1]:
            if piece.endswith("\r"):
                lines.append(piece[:-1])
                endings.append("\r\n")
            else:
                lines.append(piece)
                endings.append("\n")
        if pieces[-1]:
            lines.append(pieces[-1])
            endings.append("")
        return cls(lines, endings, byte_order_mark)

    def dominant_ending(self) -> str:
        crlf = self.endings.count("\r\n")
        return "\r\n" if crlf and crlf >= self.endings.count("\n") else "\n"

    def replaced(self, replacements: list[_Replacement]) -> "_Text":
        ending = self.dominant_ending()
        lines: list[str] = []
        endings: list[str] = []
        cursor = 0
        for index, removed, inserted in replacements:
            lines += self.lines[cursor:index]
            endings += self.endings[cursor:index]
            lines += inserted
            endings += [ending] * len(inserted)
            cursor = index + removed
        lines += self.lines[cursor:]
        endings += self.endings[cursor:]
        # Only the last line may lack a newline; an untouched last line keeps its original state.
        for position in range(len(endings) - 1):
            if not endings[position]:
                endings[position] = ending
        return _Text(lines, endings, self.byte_order_mark)

    def render(self) -> str:
        body = "".join(line + ending for line, ending in zip(self.lines, self.endings))
        return ("\ufeff" if self.byte_order_mark else "") + body


# --------------------------------------------------------------------------- the workspace


@dataclass
class _Entry:
    """One path as it was on disk and as the patch leaves it."""

    path: str
    location: str
    real: str
    before: bytes | None
    before_stat: os.stat_result | None
    after: bytes | None
    after_mode: int | None = None
    touched: bool = False


class _Workspace:
    """An in-memory view of the files a patch touches; nothing reaches the disk until commit."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise PatchError(f"The workspace root {root} is not a directory. {_NOTHING_CHANGED}")
        self.entries: dict[str, _Entry] = {}

    def entry(self, path: str) -> _Entry:
        if path not in self.entries:
            location, real = self._resolve(path)
            try:
                status = os.stat(real)
            except (FileNotFoundError, NotADirectoryError):
                status = None
            except OSError as error:
                raise PatchError(f"Cannot read {path}: {error.strerror}. {_NOTHING_CHANGED}") from error
            if status is not None and stat.S_ISDIR(status.st_mode):
                raise PatchError(
                    f"{path} is a directory; apply_patch edits files only. Use the shell to "
                    f"manage directories. {_NOTHING_CHANGED}"
                )
            if status is not None and not stat.S_ISREG(status.st_mode):
                raise PatchError(f"{path} is not a regular file. {_NOTHING_CHANGED}")
            try:
                content = Path(real).read_bytes() if status is not None else None
            except OSError as error:
                raise PatchError(f"Cannot read {path}: {error.strerror}. {_NOTHING_CHANGED}") from error
            self.entries[path] = _Entry(path, location, real, content, status, content)
        return self.entries[path]

    def _resolve(self, path: str) -> tuple[str, str]:
        """(path with symlink-free parents, fully resolved path); refused when either leaves the root.

        The first is what a deletion unlinks (the link itself), the second what reads and writes use.
        """
        joined = os.path.join(self.root, path)
        location = os.path.join(os.path.realpath(os.path.dirname(joined)), os.path.basename(joined))
        real = os.path.realpath(joined)
        for candidate in (location, real):
            if os.path.commonpath([candidate, self.root]) != self.root or candidate == self.root:
                raise PatchError(
                    f"{path} resolves outside the workspace (through a symbolic link), so it cannot "
                    f"be patched. Patch the file at its real place inside the workspace. "
                    f"{_NOTHING_CHANGED}"
                )
        return location, real

    def text_of(self, path: str, action: str) -> str:
        current = self.entry(path).after
        if current is None:
            raise PatchError(
                f"Cannot {action} {path}: the file does not exist. Check the path (list the "
                f"directory with the shell); use '{ADD_FILE} {path}' to create a new file. "
                f"{_NOTHING_CHANGED}"
            )
        return current.decode("utf-8", "surrogateescape")

    def write(self, path: str, text: str, mode: int | None = None) -> None:
        entry = self.entry(path)
        entry.after = text.encode("utf-8", "surrogateescape")
        entry.touched = True
        if mode is not None:
            entry.after_mode = mode

    def delete(self, path: str) -> None:
        entry = self.entry(path)
        entry.after = None
        entry.touched = True

    def mode_of(self, path: str) -> int | None:
        entry = self.entry(path)
        if entry.after_mode is not None:
            return entry.after_mode
        return stat.S_IMODE(entry.before_stat.st_mode) if entry.before_stat else None


def _plan(hunks: list[Hunk], workspace: _Workspace) -> list[tuple[str, str]]:
    """Apply every hunk to the in-memory workspace; returns the renames made."""
    moves = []
    for hunk in hunks:
        if isinstance(hunk, AddFile):
            workspace.write(hunk.path, hunk.contents)
        elif isinstance(hunk, DeleteFile):
            workspace.text_of(hunk.path, "delete")
            workspace.delete(hunk.path)
        else:
            original = _Text.parse(workspace.text_of(hunk.path, "update"))
            replacements = _replacements(hunk.path, original.lines, hunk.chunks)
            updated = original.replaced(replacements).render()
            if hunk.move_to is None:
                workspace.write(hunk.path, updated)
            else:
                workspace.entry(hunk.move_to)
                workspace.write(hunk.move_to, updated, workspace.mode_of(hunk.path))
                workspace.delete(hunk.path)
                moves.append((hunk.path, hunk.move_to))
    return moves


def _result(workspace: _Workspace, moves: list[tuple[str, str]]) -> PatchResult:
    origins: dict[str, str] = {}
    for src, dst in moves:
        origins[dst] = origins.pop(src, src)
    entries = workspace.entries
    final_moves = [
        (src, dst)
        for dst, src in origins.items()
        if entries[src].before is not None and entries[src].after is None and entries[dst].after is not None
    ]
    in_moves = {path for pair in final_moves for path in pair}
    result = PatchResult(moved=final_moves)
    for path, entry in workspace.entries.items():
        if not entry.touched or path in in_moves:
            continue
        if entry.before is None and entry.after is not None:
            result.added.append(path)
        elif entry.before is not None and entry.after is None:
            result.deleted.append(path)
        elif entry.before is not None:
            result.modified.append(path)
    return result


# --------------------------------------------------------------------------- writing


class _Journal:
    """Undo records for the writes made so far, so a failed commit leaves the tree as it was."""

    def __init__(self) -> None:
        self.undo: list[Callable[[], None]] = []

    def rollback(self) -> None:
        for action in reversed(self.undo):
            try:
                action()
            except OSError:
                # Keep undoing the rest: a partial restore beats stopping at the first obstacle.
                pass


def _make_parents(real: str, root: str, owner: tuple[int, int] | None, journal: _Journal) -> None:
    missing = []
    parent = os.path.dirname(real)
    while parent != root and not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        os.mkdir(directory)
        journal.undo.append(lambda directory=directory: os.rmdir(directory))
        if owner is not None:
            os.chown(directory, *owner)


def _write_file(entry: _Entry, root: str, owner: tuple[int, int] | None, journal: _Journal) -> None:
    assert entry.after is not None
    if os.path.lexists(entry.real):
        flags = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW
        previous = Path(entry.real).read_bytes()
        previous_mode = stat.S_IMODE(os.stat(entry.real).st_mode)
        descriptor = os.open(entry.real, flags)
        journal.undo.append(lambda: _restore(entry.real, previous, previous_mode))
        created = False
    else:
        _make_parents(entry.real, root, owner, journal)
        descriptor = os.open(entry.real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        journal.undo.append(lambda: os.unlink(entry.real))
        created = True
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(entry.after)
    if entry.after_mode is not None:
        os.chmod(entry.real, entry.after_mode)
    if created and owner is not None:
        os.chown(entry.real, *owner)


def _restore(real: str, content: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    with os.fdopen(os.open(real, flags, mode), "wb") as handle:
        handle.write(content)
    os.chmod(real, mode)
    if owner is not None:
        os.chown(real, *owner)


def _delete_file(entry: _Entry, journal: _Journal) -> None:
    assert entry.before is not None and entry.before_stat is not None
    if os.path.islink(entry.location):
        target = os.readlink(entry.location)
        os.unlink(entry.location)
        journal.undo.append(lambda: os.symlink(target, entry.location))
        return
    os.unlink(entry.real)
    status = entry.before_stat
    owner = (status.st_uid, status.st_gid) if os.geteuid() == 0 else None
    journal.undo.append(
        lambda: _restore(entry.real, entry.before, stat.S_IMODE(status.st_mode), owner)
    )


def _commit(workspace: _Workspace, owner: tuple[int, int] | None) -> None:
    journal = _Journal()
    changed = [
        e
        for e in workspace.entries.values()
        if e.touched and (e.after != e.before or (e.after is not None and e.after_mode is not None))
    ]
    # Deletions go first so a deleted file can make way for a directory of the same name.
    deletions = [e for e in changed if e.after is None]
    writes = [e for e in changed if e.after is not None]
    current = None
    try:
        for current in deletions:
            _delete_file(current, journal)
        for current in writes:
            _write_file(current, workspace.root, owner, journal)
    except OSError as error:
        journal.rollback()
        reason = error.strerror or str(error)
        culprit = f" ({error.filename})" if error.filename else ""
        raise PatchError(
            f"Writing {current.path if current else 'the patch'} failed: {reason}{culprit}. "
            f"Every change already written was undone. {_NOTHING_CHANGED}"
        ) from error


def apply_patch(text: str, root: Path, owner: tuple[int, int] | None = None) -> PatchResult:
    """Apply a Codex-format patch under root: every hunk applies, or nothing changes.

    owner, when given as (uid, gid), becomes the owner of every file and directory the patch
    creates; updated files keep their owner and mode.
    """
    hunks = parse_patch(text)
    workspace = _Workspace(Path(root))
    moves = _plan(hunks, workspace)
    _commit(workspace, owner)
    return _result(workspace, moves)
