"""Guards on model output shown to a user: a reply that echoes its prompt, repeats itself or degenerates.

Small models fail in a few recognisable ways: they recite their system prompt, loop on one sentence or
paragraph, or slide into a run of one character, replacement characters or another script. None of that
may reach a user as if it were an answer or a summary. ``find_problem`` judges a whole text; ``StreamGuard``
judges a stream as it arrives and releases only complete lines that passed, so a looping reply is stopped
before its second copy is shown.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

from ..prompts import PROMPTS_DIR, load_prompt

ECHO_WORDS = 10            # this many consecutive words of the instructions in a reply is an echo
ECHO_LINE_CHARS = 25       # a line of the instructions this long, repeated verbatim, is an echo
REPEAT_LINE_CHARS = 30     # a prose line this long appearing twice is a loop
REPEAT_SENTENCE_CHARS = 40
REPEAT_NGRAM = 8           # a word 8-gram appearing REPEAT_NGRAM_TIMES times in prose is a loop
REPEAT_NGRAM_TIMES = 4
REPEAT_CODE_LINE_CHARS = 20
REPEAT_CODE_LINE_TIMES = 4
CHAR_RUN = 30              # one non-space character this many times in a row
SEPARATOR_RUN = 100        # ... for characters that draw rules and tables
SEPARATORS = set("-=_*#~`.─━|+")
BAD_CHARS = 2              # replacement / private-use characters tolerated below this count
FOREIGN_RUN = 8            # CJK characters in a row, in a conversation that has none
REPEAT_SPAN_WORDS = 10     # a run of this many words of prose seen before is a loop
HOLD_WORDS = 12            # a stream is shown this many words behind the newest (> ECHO_WORDS, REPEAT_SPAN_WORDS)

_WORD = re.compile(r"[a-z0-9_]+")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_TEMPLATE_FIELD = re.compile(r"\{\{\s*\w+\s*\}\}")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _norm(line: str) -> str:
    return " ".join(_LIST_MARK.sub("", line).lower().split())


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF
            or 0xF900 <= o <= 0xFAFF or 0xFF00 <= o <= 0xFFEF or 0x3000 <= o <= 0x303F)


def _is_bad_char(ch: str) -> bool:
    return ch == "\ufffd" or unicodedata.category(ch) in ("Co", "Cs") or (ch < " " and ch not in "\n\t\r")


def split_code(text: str) -> tuple[list[str], list[str]]:
    """(prose lines, code lines): lines inside ``` fences are code."""
    prose, code, inside = [], [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            inside = not inside
            continue
        (code if inside else prose).append(line)
    return prose, code


class Instructions:
    """The fixed text a reply must not recite: system prompts and the literal parts of prompt templates."""

    def __init__(self, texts: Iterable[str]):
        segments = [seg for text in texts for seg in _TEMPLATE_FIELD.split(text)]
        self.ngrams: set[tuple[str, ...]] = set()
        self.lines: set[str] = set()
        for seg in segments:
            words = _words(seg)
            self.ngrams.update(tuple(words[i:i + ECHO_WORDS]) for i in range(len(words) - ECHO_WORDS + 1))
            self.lines.update(n for n in (_norm(line) for line in seg.splitlines()) if len(n) >= ECHO_LINE_CHARS)

    @classmethod
    def from_prompts(cls, *names: str, extra: Sequence[str] = ()) -> "Instructions":
        return cls([*(load_prompt(n) for n in names), *extra])

    @staticmethod
    @functools.lru_cache(maxsize=1)
    def every_prompt() -> "Instructions":
        """All of the product's prompts: no reply to a user has reason to recite any of them."""
        return Instructions(load_prompt(p.name) for p in sorted(PROMPTS_DIR.iterdir()) if p.is_file())

    def echoed_in(self, text: str) -> bool:
        words = _words(text)
        if any(tuple(words[i:i + ECHO_WORDS]) in self.ngrams for i in range(len(words) - ECHO_WORDS + 1)):
            return True
        return any(_norm(line) in self.lines for line in text.splitlines())


def find_problem(text: str, instructions: Instructions | None = None, *, conversation: str = "") -> str | None:
    """Why ``text`` must not be shown as the model's reply, or None when nothing is wrong with it.
    ``conversation`` is what the user wrote (a reply in their script is fine)."""
    if not text.strip():
        return "the reply was empty"
    if instructions is not None and instructions.echoed_in(text):
        return "the reply recited its instructions"
    problem = _degenerate(text, conversation)
    if problem:
        return problem
    return _repetition(text)


def _degenerate(text: str, conversation: str) -> str | None:
    for match in re.finditer(r"(\S)\1{%d,}" % (CHAR_RUN - 1), text):
        if match.group(1) not in SEPARATORS or len(match.group(0)) >= SEPARATOR_RUN:
            return f"the reply degenerated into a run of {match.group(1)!r}"
    if sum(1 for ch in text if _is_bad_char(ch)) >= BAD_CHARS:
        return "the reply contains unreadable characters"
    if not any(_is_cjk(ch) for ch in conversation):
        run = 0
        for ch in text:
            run = run + 1 if _is_cjk(ch) else (run if ch.isspace() and run else 0)
            if run >= FOREIGN_RUN:
                return "the reply slid into another script"
    return None


def _repetition(text: str) -> str | None:
    prose, code = split_code(text)
    lines = Counter(n for n in map(_norm, prose) if len(n) >= REPEAT_LINE_CHARS)
    if lines and lines.most_common(1)[0][1] >= 2:
        return "the reply repeats itself"
    sentences = Counter(n for line in prose for s in _SENTENCE_END.split(line)
                        if len(n := _norm(s)) >= REPEAT_SENTENCE_CHARS)
    if sentences and sentences.most_common(1)[0][1] >= 2:
        return "the reply repeats itself"
    words = _words(" ".join(prose))
    spans = Counter(tuple(words[i:i + REPEAT_SPAN_WORDS]) for i in range(len(words) - REPEAT_SPAN_WORDS + 1))
    if spans and spans.most_common(1)[0][1] >= 2:
        return "the reply repeats itself"
    grams = Counter(tuple(words[i:i + REPEAT_NGRAM]) for i in range(len(words) - REPEAT_NGRAM + 1))
    if grams and grams.most_common(1)[0][1] >= REPEAT_NGRAM_TIMES:
        return "the reply repeats itself"
    code_lines = Counter(n for n in (" ".join(c.split()) for c in code) if len(n) >= REPEAT_CODE_LINE_CHARS)
    if code_lines and code_lines.most_common(1)[0][1] >= REPEAT_CODE_LINE_TIMES:
        return "the reply repeats itself"
    return None


class StreamGuard:
    """Judges a streamed reply as it grows; ``feed`` returns the text that may be shown now.

    Text is released word by word, HOLD_WORDS behind the newest word, once the whole text so far passes
    ``find_problem``: a recitation (ECHO_WORDS words of a prompt) or the start of a repeat (REPEAT_SPAN_WORDS
    words seen before) is caught before its first word is shown. The first problem stops all release
    (``problem`` says why): the caller stops the stream and replaces the reply."""

    def __init__(self, instructions: Instructions | None = None, conversation: str = ""):
        self.instructions = instructions
        self.conversation = conversation
        self.text = ""
        self.released = 0
        self.problem: str | None = None
        self._starts: list[int] = []     # where each whitespace-separated word of the text begins

    def feed(self, delta: str) -> str:
        if self.problem or not delta:
            return ""
        # The last word may have grown: rescan from its start.
        scan_from = self._starts.pop() if self._starts else 0
        self.text += delta
        self._starts += [m.start() + scan_from for m in re.finditer(r"\S+", self.text[scan_from:])]
        if len(self._starts) <= HOLD_WORDS or self._starts[-HOLD_WORDS] <= self.released:
            return ""
        return self._release(self._starts[-HOLD_WORDS])

    def finish(self) -> str:
        """The rest, once the stream has ended (judged as a whole)."""
        if self.problem:
            return ""
        return self._release(len(self.text))

    def _release(self, cut: int) -> str:
        self.problem = find_problem(self.text, self.instructions, conversation=self.conversation)
        if self.problem:
            return ""
        out, self.released = self.text[self.released:cut], cut
        return out

    @property
    def shown(self) -> str:
        return self.text[:self.released]
