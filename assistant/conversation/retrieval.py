"""Retrieval for quick answers by a small model: the product searches, the model reads and cites.

A 1.5B model cannot navigate a repository with tools on its own (it stops at once or loops). So the
product does what a developer would: search for the question's identifiers and words with the same
read-only tools, rank the hits, and read a few numbered windows around the best ones. The model gets
those excerpts, each headed by the citation that covers it, and answers from them. The same excerpts
are the fallback answer when the model's reply is unusable.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from .repo_tools import ReadOnlyRepo

MAX_TERMS = 8
MAX_WINDOWS = 3
MAX_LINES = 70             # all excerpts together: the prompt stays small enough for a CPU model
WINDOW_BEFORE, WINDOW_AFTER = 4, 14
SMALL_FILE_LINES = 40      # a file this short is read whole
CODE_SUFFIXES = (".py", ".js", ".ts", ".go", ".rs", ".java", ".rb", ".c", ".h", ".cpp", ".sh", ".toml", ".cfg",
                 ".md", ".txt", ".json", ".yaml", ".yml", ".ini", ".tsx", ".jsx")

_IDENT = re.compile(r"`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)")
_STOP = set("""a an and are as at be been but by can could did do does doing done for from had has have how i if in
into is it its just like may me might my no not of on or our please should so some such tell than that the their
them then there these they this those to too up us use used uses using was we were what when where which while who
why will with would you your about after again all also any because before between both each few more most other
over same only own very explain show find code file files function functions method methods class classes work works
repo repository project happen happens mean means thing things write get gets make makes call calls called value
values return returns returned""".split())


@dataclass
class Excerpt:
    path: str
    start: int
    end: int
    text: str                   # numbered lines, as read_file shows them

    @property
    def citation(self) -> str:
        return f"【F:{self.path}†L{self.start}-L{self.end}】"


@dataclass
class Retrieval:
    terms: list[str]
    excerpts: list[Excerpt] = field(default_factory=list)
    lookups: list[tuple[str, dict, str]] = field(default_factory=list)   # (tool, arguments, output) as run

    def as_prompt(self) -> str:
        if not self.excerpts:
            return "(the search found nothing relevant)"
        return "\n\n".join(f"{e.citation} {e.path} lines {e.start}-{e.end}:\n{e.text}" for e in self.excerpts)

    def fallback_answer(self, why: str) -> str:
        """The search result itself, as an answer: what the code search found, each part cited."""
        if not self.excerpts:
            return (f"I could not produce a usable answer ({why}), and a search of the repository for "
                    f"{', '.join(self.terms) or 'your words'} found nothing. Try naming a file or function.")
        parts = [f"I could not produce a usable answer ({why}). This is what a search of the repository for "
                 f"{', '.join(f'`{t}`' for t in self.terms)} found:"]
        for e in self.excerpts:
            code = "\n".join(line.split(" | ", 1)[-1] for line in e.text.splitlines())
            parts.append(f"`{e.path}` lines {e.start}-{e.end} {e.citation}\n```\n{code}\n```")
        return "\n\n".join(parts)


_JOINED = re.compile(r"【([^】]*[,;][^】]*)】")
_ONE_FILE_CITATION = re.compile(r"^(?:F:)?([^†,;】\s][^†,;】]*)†(L\d+(?:-L\d+)?)$")


def split_joined_citations(text: str) -> str:
    """Small models join citations (【F:a.py†L1-L6, F:b.py†L8-L9】); the checker reads one per bracket, so
    each becomes its own. Anything that is not a list of file citations is left as written (and unverified)."""
    def split(match: re.Match) -> str:
        parts = [p.strip() for p in re.split(r"[,;]", match.group(1))]
        found = [_ONE_FILE_CITATION.match(p) for p in parts]
        if not all(found):
            return match.group(0)
        return "".join(f"【F:{m.group(1).strip()}†{m.group(2)}】" for m in found)
    return _JOINED.sub(split, text)


def question_terms(question: str) -> list[str]:
    """Identifiers first (in backticks, snake_case, CamelCase, dotted, file names), then plain words."""
    idents, words = [], []
    for quoted, bare in _IDENT.findall(question):
        term = (quoted or bare).strip()
        if not term or term.lower() in _STOP:
            continue
        is_ident = bool(quoted) or "_" in term or "." in term or any(c.isupper() for c in term[1:]) \
            or any(c.isdigit() for c in term)
        if is_ident:
            idents.append(term.strip("().,:;"))
        elif len(term) >= 3:
            words.append(term.lower())
    out: list[str] = []
    for term in idents + words:
        if term and term not in out:
            out.append(term)
    return out[:MAX_TERMS]


def _search_pattern(term: str) -> str:
    if re.fullmatch(r"[\w.]+", term):
        return r"\b" + re.escape(term) + r"\b" if "." not in term else re.escape(term)
    return re.escape(term)


def retrieve(repo: ReadOnlyRepo, question: str) -> Retrieval:
    """Search the repository for the question's terms and read the best few windows, numbered."""
    terms = question_terms(question)
    result = Retrieval(terms)
    files_listing = repo.run("list_files", {})
    result.lookups.append(("list_files", {}, files_listing))
    files = [f for f in files_listing.splitlines() if f and not f.startswith(("…", "("))]
    scores: dict[tuple[str, int], float] = defaultdict(float)
    file_scores: dict[str, float] = defaultdict(float)
    for rank, term in enumerate(terms):
        weight = 1.0 / (1 + rank * 0.25) * (2.0 if term not in _plain_words(terms, question) else 1.0)
        out = repo.run("search", {"pattern": _search_pattern(term)})
        result.lookups.append(("search", {"pattern": _search_pattern(term)}, out))
        for path, line, text in _hits(out):
            defines = re.search(r"\b(def|class|function|func|fn|interface|struct|type)\s+" + re.escape(term.split(".")[-1]) + r"\b", text)
            scores[(path, line)] += weight * (3.0 if defines else 1.0) * (0.6 if _is_test(path) else 1.0)
            file_scores[path] += weight * 0.2
        stem = term.lower().rsplit(".", 1)[0]
        for f in files:
            if stem and stem in f.lower().rsplit("/", 1)[-1]:
                file_scores[f] += weight * 2
    windows = _windows(repo, scores, file_scores, files)
    for path, start, end in windows:
        out = repo.run("read_file", {"path": path, "start": start, "end": end})
        result.lookups.append(("read_file", {"path": path, "start": start, "end": end}, out))
        body = "\n".join(out.splitlines()[1:])
        if body.strip() and not out.startswith("error"):
            body = "\n".join(ln for ln in body.splitlines() if not ln.startswith("… file has"))
            result.excerpts.append(Excerpt(path, start, end, body))
    return result


def _plain_words(terms: list[str], question: str) -> set[str]:
    return {t for t in terms if t.islower() and t.isalpha() and f"`{t}`" not in question}


def _is_test(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.startswith("test_") or name.endswith("_test.py") or "/tests/" in f"/{path}"


def _hits(search_output: str):
    for line in search_output.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1].isdigit():
            yield parts[0], int(parts[1]), parts[2]


def _windows(repo: ReadOnlyRepo, scores: dict[tuple[str, int], float], file_scores: dict[str, float],
             files: list[str]) -> list[tuple[str, int, int]]:
    """The best-scoring hit lines as windows (a short file whole), merged, within MAX_LINES in all."""
    ranked = sorted(scores.items(), key=lambda kv: (-(kv[1] + file_scores[kv[0][0]]), kv[0]))
    candidates = [(path, line) for (path, line), _ in ranked]
    if not candidates:  # no hit: the files whose names match, else the smallest source files
        named = sorted((f for f in file_scores if file_scores[f] > 0), key=lambda f: -file_scores[f])
        fallback = named or [f for f in files if f.endswith(CODE_SUFFIXES)]
        candidates = [(f, 1) for f in fallback[:MAX_WINDOWS]]
    chosen: list[tuple[str, int, int]] = []
    used = 0
    for path, line in candidates:
        if len(chosen) >= MAX_WINDOWS or used >= MAX_LINES:
            break
        count = repo.line_count(path)
        if not count:
            continue
        if any(p == path and s <= line <= e for p, s, e in chosen):
            continue
        if count <= SMALL_FILE_LINES:
            start, end = 1, count
        else:
            start, end = max(1, line - WINDOW_BEFORE), min(count, line + WINDOW_AFTER)
        end = min(end, start + (MAX_LINES - used) - 1)
        merged = False
        for i, (p, s, e) in enumerate(chosen):
            if p == path and start <= e + 2 and end >= s - 2:
                new = (p, min(s, start), max(e, end))
                used += (new[2] - new[1]) - (e - s)
                chosen[i] = new
                merged = True
                break
        if not merged:
            chosen.append((path, start, end))
            used += end - start + 1
    return chosen
