"""What a chat message says on its surface: its shape (a question, an order, a pasted log, small talk)
and which job of the conversation it names. Shared by the first-pass rules and the route classifier.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..store import Job

# ---------------------------------------------------------------------- the shape of a message
_VERBS = (r"fix|add|implement|refactor|change|write|update|remove|delete|rename|create|migrate|upgrade|bump|port|"
          r"convert|optimi[sz]e|improve|replace|move|extract|split|introduce|repair|patch|clean\s+up|reformat|"
          r"document|drop|revert|undo|amend|rewrite|set\s+up|get\s+rid\s+of|speed\s+up|make|tweak|adjust|modify|"
          r"install|configure|enable|disable|deprecate|restructure|simplify|paralleli[sz]e|cache|vendor|"
          r"squash|guard|wire|turn|translate|extend|redo|apply|sort|roll\s+back|back\s+out|restore|shrink|handle|hide|"
          r"retry|try\s+again|resume|finish|do\s+the\s+same")
VERBS = _VERBS
# A work verb opening the message, after filler words: "Fix …", "please add …", "ok, now rename …".
IMPERATIVE = re.compile(rf"^(?:(?:please|now|ok|okay|so|then|let's|lets|let\s+us)[,\s]+)*(?:{_VERBS})\b", re.I)
# "Can you add …?", "could u please also fix …", "would you mind adding …?", "would it be possible to add …?"
POLITE_ORDER = re.compile(rf"^(?:please\s+)?(?:(?:can|could|would|will)\s+(?:you|u)\s+(?:please\s+)?(?:also\s+)?"
                          rf"(?:be\s+able\s+to\s+|mind\s+)?|would\s+it\s+be\s+possible\s+to\s+|mind\s+)"
                          rf"(?:{_VERBS})(?:ing)?\b", re.I)
# An order inside a longer message: "…, remove it", "… — can you amend it?", "On top of job 2, add …"
ORDER_CLAUSE = re.compile(rf"(?:^|[,;:\u2014\u2013]\s*|\s-\s|\b(?:but|and|so|then|now|please)\s+)"
                          rf"(?:please\s+)?(?:(?:can|could|would)\s+you\s+)?(?:{_VERBS})\b", re.I)
# A question that carries work all the same: an order clause, "… can you speed it up?", "… and can we drop it?",
# "… we should cache it". A work verb alone does not ("how do I add a column?", "which function handles cache eviction").
WORK_CLAUSE = re.compile(rf"{ORDER_CLAUSE.pattern}|\b(?:can|could|would|will)\s+(?:you|u)\s+(?!(?:please\s+)?(?:tell|explain|"
                         rf"show|describe|walk|list|summari[sz]e|point)\b)|\b(?:can|could|should|shall)\s+we\s+(?!be\b)|"
                         rf"\bwe\s+(?:should|need\s+to|must)\s+(?:just\s+|also\s+)?(?:{_VERBS})\b", re.I)
WORK_VERB = re.compile(rf"\b(?:{_VERBS})(?:s|es|ed|d|ing)?\b", re.I)
WORK_VERB_BASE = re.compile(rf"\b(?:{_VERBS})\b", re.I)
# … and "can the parser …", "will it …": asking whether the code can, not asking the assistant to ("could the form
# validate …?" proposes work: left open); "any reason …", "any idea why …"
QUESTION_START = re.compile(r"^(?:what|what's|whats|why|how|where|which|who|whose|is|are|was|were|does|do|did|has|"
                            r"when\s+(?:would|should|do|does|did|is|are|was|were|will|can|could)|"
                            r"have|should|(?:can|could)\s+you\s+(?:please\s+)?(?:tell\s+me|explain)|"
                            r"(?:can|will|would)\s+(?!it\s+be\s+possible)(?:the|this|that|these|those|it|our|my|any)\b|"
                            r"any\s+(?:reason|idea)\b)\b", re.I)
# An acknowledgement opening the message ("nice.", "ok, ", "thanks!"): what follows says what the message is.
LEADING_ACK = re.compile(r"^(?:\W*(?:ok|okay|nice|great|cool|good|thanks|thank\s+you|perfect|awesome|sweet|lgtm|alright|"
                         r"got\s+it|hmm+)\b[\s,.!:\-]*)+", re.I)
# "… can you amend it?"
POLITE_CLAUSE = re.compile(rf"\b(?:can|could|would)\s+(?:you|u)\s+(?:please\s+)?(?:{_VERBS})\b", re.I)
# Questions that read as questions even without a question mark: "where is the session created"
# ("when would I …", "when does …"; not "when I upload a file it crashes", a bug report)
WH_WORD = re.compile(r"^(?:what|what's|whats|why|how|where|which|who|any\s+(?:reason|idea)|"
                     r"when\s+(?:would|should|do|does|did|is|are|was|were|will|can|could))\b", re.I)
# Orders to read and report, not to change: "Explain …", "Show me …", "Help me understand …"
READ_ORDER = re.compile(r"^(?:please\s+)?(?:explain|describe|summari[sz]e|show\s+me|tell\s+me|list|point\s+me|remind\s+me|"
                        r"(?:talk|run)\s+me\s+through|go\s+over|clarify|"
                        r"walk\s+me\s+through|give\s+me\s+(?:an?\s+)?(?:overview|summary|one-paragraph\s+summary)|"
                        r"help\s+me\s+understand|i'd\s+like\s+to\s+understand|i\s+want\s+to\s+(?:know|understand))\b",
                        re.I)
# An order in a later sentence: "Where is X built? Move it into …", "… file? Afterwards, document that …",
# "is there a reason we don't cache X? if not, let's add …"
LATER_ORDER = re.compile(rf"[.?!]\s+(?:(?:please|then|afterwards|and|also|now|if\s+(?:not|so)|otherwise|let's|lets|"
                         rf"let\s+us)[,\s]+)*(?:{_VERBS})\b", re.I)
# Words that point back at earlier work: evidence (for the classifier) that a message follows up a job.
_POINTS_BACK = re.compile(r"\b(?:it|its|it's|that|this|those|them|these|same|also|too|again|now|still|you|your|"
                         r"instead|did|didn't|was|were|has|have|had|went|ran|been|anymore|as\s+well)\b", re.I)
# Questions that propose work: "why not cache it?", "how about adding …?", "should we split …?"
SUGGESTION = re.compile(r"^(?:why\s+(?:don't|not|dont)|how\s+about|what\s+about|should\s+(?:we|i|you)\s)", re.I)
# "… just tell me, don't change anything", "no code changes yet": the user wants an answer.
READ_ONLY = re.compile(r"\b(?:don't|do\s+not|dont)\s+(?:change|edit|touch|modify|fix|run)\s+anything|\bno\s+need\s+to\s+change|"
                       r"\b(?:don't|do\s+not|dont)\s+want\s+(?:a\s+fix|you\s+to\s+(?:change|fix|touch))|"
                       r"\bnot\s+asking\s+(?:you\s+)?(?:for\s+a\s+fix|to\s+(?:fix|change|build))|"
                       r"\bdon't\s+do\s+it|\bjust\s+(?:tell\s+me|explain|outline|curious)|\bno\s+code\s+changes?\b|"
                       # the user will make the change: "I want to add a category myself", "I'll do the work myself"
                       r"\b(?:i'll|i\s+will|i\s+want\s+to|want\s+to|i'd\s+(?:like|rather)\s+to|i'm\s+going\s+to|i\s+plan\s+to)\s+"
                       r"(?:\w+\s+){0,5}?(?:myself|on\s+my\s+own)\b", re.I)
# About what a job did: "did you …", "you changed …", "has job 2 …"
ABOUT_DONE_WORK = re.compile(r"\b(?:did|didn't|have|haven't|has|hasn't)\s+(?:you|it|the\s+job|job\s*#?\d+)\b"
                             r"|\byou\s+(?:\w+ed|did|ran|wrote|made|chose|forgot|left|broke)\b",
                             re.I)
# Greetings, thanks and acknowledgements, alone (a few of them, an emoji): "thanks!", "ok cool", "lol ok",
# "good morning ☕", "thanks, that's super helpful 🙏". Anything more ("nice, now add …") is not small talk.
_SMALL_WORD = (r"(?:hi|hello|hey|yo|ah+|oh+|aha|morning|thanks|thank\s+you|thx|ty|ok|okay|k|cool|nice|great|perfect|awesome|"
               r"lol|haha|ha|sweet|neat|bye|cheers|got\s+it|sounds\s+good|good\s+(?:morning|night|evening|afternoon)|"
               r"never\s*mind|nvm|makes\s+sense|that's\s+all(?:\s+for\s+(?:now|today))?|alright|all\s+right|"
               r"appreciate\s+it|fair\s+enough|good\s+to\s+know|understood|i\s+see|gotcha|noted|will\s+do)"
               r"(?:\s+(?:there|a\s+lot|so\s+much|very\s+much|again|now))?")
_NOT_WORDS = r"[\s!.,:;)(\-~\u2014]|[^\w\s?`'\"/\\#@<>\[\]{}=*&|$%^+]"   # spaces, punctuation, emoji
# "… that was super helpful", "lol ok that makes sense": an acknowledgement of what was said, nothing asked.
SMALL_TALK = re.compile(rf"^(?:{_SMALL_WORD}(?:{_NOT_WORDS})*)+(?:(?:that|this|it)(?:'s|\s+was|\s+is)\s+"
                        rf"(?:(?:super|very|really|so|extremely)\s+)?(?:helpful|great|perfect|awesome|useful|clear)"
                        rf"|(?:that|this|it)\s+(?:makes\s+sense|helps|helped|clears\s+(?:it|that)\s+up))?(?:{_NOT_WORDS})*$", re.I)
# Words of a report that something is wrong: "fails", "blank", "doesn't", "twice", "no longer" …
PROBLEM = re.compile(r"\b(?:fails?|failing|failed|crash(?:es)?|throws?|broken|breaks|bug|wrong|hangs?|off\s+by|"
                     r"doesn't|don't|isn't|aren't|can't|cannot|won't|invisible|blank|duplicates?|truncated|slow|"
                     r"regressed|red|leaks?|error|exception|500|404|chokes?|blows?\s+up|does\s+nothing|"
                     r"silently|twice|never|always|missing|stale|accepts?|instead\s+of|no\s+longer|anymore|"
                     r"since)\b", re.I)
# An acknowledgement, then a few words about the assistant or the result and nothing more: "thank you!! you're a
# lifesaver", "ok it works now", "thanks, I'll try that". Not when the rest asks, orders, objects or reports a
# problem ("thanks, but it still fails", "ok it hangs on start", "nice, now add …").
_ACK_REMARK = re.compile(r"^(?:you|you're|youre|that|that's|thats|this|this\s+is|it|it's|its|i|i'll|i'm|we|we're|works|"
                         r"worked|all\s+good|much\s+better)\b", re.I)
_OBJECTION = re.compile(r"\b(?:but|still|again|though|also|except|however|now|just|not|no|nothing|n't)\b|n't\b", re.I)


def ack_remark(body: str) -> bool:
    ack = LEADING_ACK.match(body)
    if not ack:
        return False
    rest = body[ack.end():].strip()
    return (bool(rest) and len(rest.split()) <= 6 and "?" not in rest and bool(_ACK_REMARK.match(rest))
            and not WORK_VERB.search(rest) and not _OBJECTION.search(rest) and not PROBLEM.search(rest))


# "run the tests and tell me what fails", "can you run mypy and report the errors": running is work for a job
# (a quick answer only reads the code).
RUN_ORDER = re.compile(r"^(?:(?:please|pls|ok|okay|so|now|then|hey)[,\s]+)*(?:(?:can|could|would|will)\s+(?:you|u)\s+"
                       r"(?:please\s+)?)?(?:(?:re-?)?run|execute)\s+(?!into\b)", re.I)
# "find and fix …", "track down … and fix it": investigating ends in a change.
FIND_AND_FIX = re.compile(r"\b(?:find|track\s+down|hunt\s+down|figure\s+out|look\s+into|dig\s+into|investigate|see|check)"
                          r"\b[^.?!]*?\b(?:and|then|&|\+)\s+(?:fix|repair|patch|resolve)\b|^(?:please\s+)?find\s+and\s+fix\b",
                          re.I)
PASTED_LOG = re.compile(r"Traceback \(most recent call last\)|^\s*File \".*\", line \d+|^\S*(?:Error|Exception)\b:|"
                        r"^(?:FAILED|ERROR|E\s{2,}|npm ERR!|error\[)", re.M)


_POLITE_OPENING = re.compile(r"^(?:please\s+)?(?:can|could|would|will)\s+(?:you|u)\b", re.I)


_LOG_LINE = re.compile(r"^\s*(?:Traceback|File \"|\S*(?:Error|Exception|Warning)\b|FAILED|ERROR|E\s|npm ERR!|error\[|-->|at\s|"
                       r"\^|\s{2,}\S)", re.I)


def log_prose(text: str) -> str:
    """The words around a pasted log: the message without its fenced blocks and log-looking lines."""
    outside = re.sub(r"```.*?(?:```|$)", " ", text, flags=re.S)
    return " ".join(line for line in outside.splitlines() if not _LOG_LINE.match(line))


def points_back(text: str) -> bool:
    """Does the message use a word that refers to earlier work ("it", "that", "also", "you added")?
    The "you" of a polite opening ("Could you add …") does not count."""
    return bool(_POINTS_BACK.search(_POLITE_OPENING.sub("", text.strip(), count=1)))


def one_sentence(text: str) -> bool:
    body = text.strip()
    return "\n" not in body and not re.search(r"[.!?;:]\s", body)


def one_question(text: str) -> bool:
    """One sentence on one line, ending in its only question mark."""
    body = text.strip()
    return (body.endswith("?") and body.count("?") == 1 and "\n" not in body
            and not re.search(r"[.!;:]\s", body[:-1]))


# ---------------------------------------------------------------------- which job a message names
# How a message named its job. Only the explicit ways may pick a failed, interrupted or cancelled job
# as the starting point of a new job; a title or the default (the latest job) may not.
BY_NUMBER, BY_ORDINAL, BY_LAST, BY_TITLE, BY_DEFAULT, BY_MODEL = "number", "ordinal", "last", "title", "default", "model"
BY_STATE = "state"   # "the cancelled one", "the failed job": the latest job in that state
EXPLICIT = (BY_NUMBER, BY_ORDINAL, BY_LAST, BY_STATE)

_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
             "ninth": 9, "tenth": 10, "1st": 1, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5}
_NUMBER_REF = re.compile(r"\b(?:job|attempt|task)\s*(?:#|no\.?\s*|number\s*)?(\d+)\b|(?<![\w&/])#(\d+)\b", re.I)
_ORDINAL_REF = re.compile(r"\b(" + "|".join(_ORDINALS) + r")\s+(?:job|one|attempt|task|run)\b", re.I)
_LAST_REF = re.compile(r"\b(?:last|latest|previous|prior|most\s+recent)\s+(?:job|one|change|run|attempt|fix|diff|"
                       r"patch|task)\b", re.I)
_STATE_WORDS = {"cancelled": ("cancelled",), "canceled": ("cancelled",), "stopped": ("cancelled", "interrupted"),
                "interrupted": ("interrupted",), "failed": ("failed",), "broken": ("failed",),
                "unfinished": ("cancelled", "interrupted", "failed", "running", "waiting"),
                "running": ("running", "waiting"), "waiting": ("waiting",)}   # waiting: its agent asked the user
_STATE_REF = re.compile(r"\b(?:the|that)\s+(" + "|".join(_STATE_WORDS) + r")\s+(?:job|one|attempt|task|run)\b", re.I)
_WORD = re.compile(r"[a-z0-9][a-z0-9_\-.]*[a-z0-9]|[a-z0-9]", re.I)
# Words that say nothing about which job is meant: they occur in most titles and most requests.
_TITLE_NOISE = frozenset("""a an the to of in on for and or with from into by at as is it its this that these those
be are was were fix fixed add added make made update updated change changed handle handled use used new support
improve improved remove removed write wrote test tests code job jobs one also now please can could would you your
me my our we so but not no do did does""".split())


@dataclass(frozen=True)
class JobReference:
    job: Job
    by: str                   # number | ordinal | last | state | title | default | model

    @property
    def explicit(self) -> bool:
        return self.by in EXPLICIT


def _stem(word: str) -> str:
    """Plural and third person to the base word: "crashes" ~ "crash", "retries" ~ "retry", "tests" ~ "test"."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and re.search(r"(?:sh|ch|x|ss|z)es$", word):
        return word[:-2]
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _content_words(text: str) -> set[str]:
    words = {w.lower().rstrip(".") for w in _WORD.findall(text)}
    return {_stem(w) for w in words if w and w not in _TITLE_NOISE}


def title_overlap(text: str, job: Job) -> int:
    """How many of the job title's content words the message uses ("the regex fix" ~ "Fix the regex in …")."""
    return len(_content_words(text) & _content_words(job.title or ""))


def latest(jobs: list[Job]) -> Job:
    return max(jobs, key=lambda j: j.number)


def find_job_reference(text: str, jobs: list[Job]) -> JobReference | None:
    """"job 2", "#2", "the second job", "the last one", "the cancelled one", or the one job whose title shares the
    most words."""
    if not jobs:
        return None
    by_number = {job.number: job for job in jobs}
    for m in _NUMBER_REF.finditer(text):
        job = by_number.get(int(m[1] or m[2]))
        if job is not None:
            return JobReference(job, BY_NUMBER)
    m = _ORDINAL_REF.search(text)
    if m and _ORDINALS[m[1].lower()] in by_number:
        return JobReference(by_number[_ORDINALS[m[1].lower()]], BY_ORDINAL)
    if _LAST_REF.search(text):
        return JobReference(latest(jobs), BY_LAST)
    m = _STATE_REF.search(text)
    if m:
        in_state = [job for job in jobs if job.state in _STATE_WORDS[m[1].lower()]]
        if in_state:
            return JobReference(latest(in_state), BY_STATE)
    scores = sorted(((title_overlap(text, job), job.number, job) for job in jobs), key=lambda s: (-s[0], -s[1]))
    if scores[0][0] >= 1 and (len(scores) == 1 or scores[0][0] > scores[1][0]):
        return JobReference(scores[0][2], BY_TITLE)
    return None


# ---------------------------------------------------------------------- words addressed to a running job
# "now: use pathlib", "now - stop the install": said at once, the command under way is stopped for it.
STEER_NOW = re.compile(r"^now\s*(?::|!|\s-\s|\u2014|\u2013)\s*", re.I)
# A correction or an addition to the work under way: "also handle …", "actually, don't …", "stop, use …",
# "wait — …", "hold on, …", "and also …", "oh and …", "forget the …", "skip the …".
STEER_CUE = re.compile(r"^(?:(?:ok|okay|oh|hmm|and|but|sorry|btw|ps|one\s+more\s+thing)[,.:!\s]+)*"
                       r"(?:also|actually|instead|stop|wait|hold\s+on|hang\s+on|forget\s+(?:the|about)|skip|"
                       r"scratch\s+that|change\s+of\s+plan)\b", re.I)
# "use pathlib instead", "rather than mocking, …"
INSTEAD = re.compile(r"\binstead\b|\brather\s+than\b", re.I)
# "don't touch the tests", "do not modify setup.py": keep away from something (not "don't change anything",
# which asks for an answer: READ_ONLY).
KEEP_AWAY = re.compile(r"^(?:(?:and|but|please|pls|oh)[,\s]+)*(?:don't|dont|do\s+not|never)\s+"
                       r"(?:touch|change|edit|modify|delete|remove|rename|add|use|commit|run|bother)\b", re.I)
# "stop, use pathlib instead": the user says to stop what it does now, so the command under way is stopped too.
STEER_STOP = re.compile(r"^(?:stop|halt)\b\s*(?:[,.!:;]|\u2014|\u2013|\s-\s|$)", re.I)
# "job 2: …", "for #2, …", "tell job 2 —": the job a message is for, said first.
ADDRESSED_JOB = re.compile(r"^(?:(?:for|in|to|tell)\s+)?(?:job\s*#?\d+|#\d+)\s*(?:[:,]|\u2014|\u2013|\s-)\s*", re.I)
ALSO = re.compile(r"\balso\b", re.I)
