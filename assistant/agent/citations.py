"""Citations: 【F:path†L10-L20】 for file lines, 【3fa9c1†L4-L9】 for lines of a logged command output.

Every citation is checked against the stored chunk or the file before it is shown; one that does not
resolve keeps valid=False and a reason, and renderers never present it as true.
"""
from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

CITATION_RE = re.compile(r"【(?:F:(?P<path>[^†】]+)|(?P<chunk>[0-9a-f]{6}))†L(?P<start>\d+)(?:-L?(?P<end>\d+))?】")


@dataclass
class Citation:
    text: str
    kind: str            # "file" | "chunk"
    target: str          # path or chunk id
    start: int
    end: int
    valid: bool = False
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def find_citations(text: str) -> list[Citation]:
    out = []
    for m in CITATION_RE.finditer(text or ""):
        start = int(m["start"])
        end = int(m["end"] or start)
        if m["path"]:
            out.append(Citation(m[0], "file", m["path"].strip(), start, end))
        else:
            out.append(Citation(m[0], "chunk", m["chunk"], start, end))
    return out


def _check_range(c: Citation, line_count: int, what: str) -> None:
    if c.start < 1 or c.end < c.start:
        c.valid, c.reason = False, f"bad line range L{c.start}-L{c.end}"
    elif c.end > line_count:
        c.valid, c.reason = False, f"{what} has {line_count} lines; L{c.start}-L{c.end} is past its end"
    else:
        c.valid, c.reason = True, ""


MAX_TEXT_BYTES = 8 * 1024 * 1024   # a file larger than this is not read whole (search it instead)
BINARY_SNIFF_BYTES = 8192
# What resolving or opening a name a client chose can raise: a missing file, a symlink loop (RuntimeError from
# Path.resolve before Python 3.13, OSError ELOOP after), a name the file system refuses, an embedded NUL byte.
UNRESOLVABLE = (OSError, RuntimeError, ValueError)


class NotText(ValueError):
    """A regular file whose text is not shown: too large to read whole, or binary. The message names no host path."""


def safe_file(roots: Iterable[Path], rel: str) -> Path | None:
    """The file a citation names, only if it stays inside one of the roots (no .., absolute paths, symlink escapes)
    and is a regular file. A symlink loop, a dangling link, a directory or a FIFO is no file: None, never an error."""
    rel = rel.strip().removeprefix("./")
    if not rel or rel.startswith("/") or any(part == ".." for part in Path(rel).parts):
        return None
    for root in roots:
        try:
            root = Path(root).resolve()
            candidate = (root / rel).resolve()
            if candidate.is_relative_to(root) and candidate.is_file():
                return candidate
        except UNRESOLVABLE:
            continue
    return None


def file_text(path: Path, max_bytes: int = MAX_TEXT_BYTES) -> str | None:
    """The text of a regular file (undecodable bytes replaced), or None when there is no regular file to read there
    any more (removed, replaced by a link, a FIFO or a directory since it was resolved, or not readable by this
    process). Raises NotText for a file too large to read whole or a binary one. Never blocks on a FIFO: the open is
    non-blocking and the kind is checked on the opened descriptor, not on the name."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY)
    except UNRESOLVABLE:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > max_bytes:
            raise NotText(f"is {_size(info.st_size)}, more than the {_size(max_bytes)} that are read whole")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew since fstat
        raise NotText(f"is more than the {_size(max_bytes)} that are read whole")
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        raise NotText(f"is a binary file ({_size(len(data))})")
    return data.decode("utf-8", errors="replace")


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n} bytes"


ChunkLookup = Callable[[str], "tuple[int, str] | None"]   # chunk id -> (line_count, owner job id) or None


def check_citations(text: str, *, file_roots: Iterable[Path] = (), chunk_lookup: ChunkLookup | None = None,
                    file_lines: Callable[[str], int | None] | None = None) -> list[Citation]:
    """Resolve each citation. ``file_lines`` (path -> line count) takes precedence over reading roots."""
    roots = list(file_roots)
    checked = []
    for c in find_citations(text):
        if c.kind == "file":
            count = file_lines(c.target) if file_lines else None
            reason = f"no file {c.target} in the workspace"
            if count is None:
                path = safe_file(roots, c.target)
                try:
                    text = file_text(path) if path is not None else None
                except NotText as exc:
                    text, reason = None, f"{c.target} {exc}"
                if text is not None:
                    count = len(text.splitlines())
            if count is None:
                c.valid, c.reason = False, reason
            else:
                _check_range(c, count, c.target)
        else:
            found = chunk_lookup(c.target) if chunk_lookup else None
            if found is None:
                c.valid, c.reason = False, f"no logged output {c.target}"
            else:
                _check_range(c, found[0], f"output {c.target}")
        checked.append(c)
    return checked


def _markdown_inert(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>#|~])", r"\\\1", " ".join(text.split()))


def render_markdown(text: str, citations: list[dict] | list[Citation], link: Callable[[dict], str]) -> str:
    """Citations become links to the cited lines; invalid or unchecked ones are struck through and
    labelled unverified, never linked. Labels read "calc.py #L4-5": chat UIs take ":L4" for a directive."""
    by_text: dict[str, dict] = {}
    for c in citations:
        d = c.as_dict() if isinstance(c, Citation) else c
        by_text.setdefault(d["text"], d)

    def sub(m: re.Match) -> str:
        d = by_text.get(m[0])
        start, end = int(m["start"]), int(m["end"] or m["start"])
        name = m["path"].strip() if m["path"] else f"log {m['chunk']}"
        label = _markdown_inert(f"{name} #L{start}" + (f"-{end}" if end != start else ""))
        if d is not None and d.get("valid"):
            return f"[{label}]({link(d)})"
        reason = (d or {}).get("reason") or "not checked"
        return f"~~{label}~~ *(unverified: {_markdown_inert(reason)})*"
    return CITATION_RE.sub(sub, text or "")


def render_plain(text: str, citations: list[dict]) -> str:
    """For terminals: [path:L10-20 ✓] or [3fa9c1:L4-9 ✗ reason]."""
    by_text = {c["text"]: c for c in citations}

    def sub(m: re.Match) -> str:
        d = by_text.get(m[0])
        if d is None:  # never checked: named the same way, and said so
            return f"[{_label(_named(m))} unchecked]"
        mark = "✓" if d["valid"] else f"✗ {d['reason']}"
        return f"[{_label(d)} {mark}]"
    return CITATION_RE.sub(sub, text or "")


class PlainStream:
    """A reply streamed to a terminal: text as it comes, each citation marker shown as [path:L10-20] once it is
    whole (its check comes with the finished reply). `feed` returns what can be printed now, `end` the rest."""

    MARKER_MAX = 400  # a 【 with no 】 within this many characters is not a marker

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str) -> str:
        self._held += text
        out = []
        while self._held:
            start = self._held.find("【")
            if start < 0:
                out.append(self._held)
                self._held = ""
                break
            out.append(self._held[:start])
            self._held = self._held[start:]
            close = self._held.find("】")
            if close < 0:
                if len(self._held) > self.MARKER_MAX:
                    out.append(self._held)
                    self._held = ""
                break
            marker, self._held = self._held[:close + 1], self._held[close + 1:]
            out.append(CITATION_RE.sub(lambda m: f"[{_label(_named(m))}]", marker))
        return "".join(out)

    def end(self) -> str:
        rest, self._held = self._held, ""
        return rest


def _named(m: re.Match) -> dict:
    start = int(m["start"])
    return {"kind": "file" if m["path"] else "chunk", "target": (m["path"] or m["chunk"]).strip(),
            "start": start, "end": int(m["end"] or start)}


def _label(d: dict) -> str:
    lines = f"L{d['start']}" + (f"-{d['end']}" if d["end"] != d["start"] else "")
    return f"{d['target']}:{lines}" if d["kind"] == "file" else f"log {d['target']}:{lines}"
