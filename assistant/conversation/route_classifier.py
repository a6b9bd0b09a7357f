"""The shipped route classifier: two logistic-regression heads over plain text features.

It carries routing when no real model endpoint is configured: the embedded demonstration model answers
almost everything, so routing with it is a coin toss. The heads:
- work:     does the message ask for changes (a job) rather than an answer?
- followup: is it about one of the conversation's jobs? (asked only when the conversation has jobs)

The weights are data (route_classifier.json next to this file), trained by bench/train_router.py on the
tuning part of bench/routing_set.jsonl; loaded once per process. Standard library only.
"""
from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..store import Job
from . import signals

WEIGHTS_PATH = Path(__file__).resolve().parent / "route_classifier.json"
FORMAT = 1
HEADS = ("work", "followup")
# The follow-up head learns from far fewer messages (only conversations with jobs): it reads words and
# signals, not word pairs or character n-grams, which it would only memorise.
HEAD_FEATURES = {"work": None, "followup": ("bias", "w:", "first:", "s:", "ctx")}

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+|[?!`#:/\\]")
_MODAL = re.compile(r"\b(?:should|must|needs?\s+to|need\s+an?|ought|would\s+be\s+(?:nice|great|good)|i'd\s+(?:like|love)|"
                    r"i\s+want|i\s+need|we\s+need|let's|time\s+to|next\s+step|your\s+task|todo)\b", re.I)
_CONDITIONAL_WORK = re.compile(r"\bif\s+(?:not|it\s+(?:doesn't|isn't|does\s+not)|there\s+isn't|it's\s+not)\b"
                               r"|\b(?:and|then)\s+(?:fix|repair|change|make|add|write|move|switch|speed|clean)\b"
                               r"|\bwhile\s+you're\s+at\s+it\b|\bafterwards\b", re.I)
_PROBLEM = signals.PROBLEM
_FOLLOW_WORDS = re.compile(r"\b(?:it|that|this|now|also|still|again|same|too|undo|revert|amend|redo|instead|"
                           r"anymore)\b", re.I)

# Whether a message in a conversation with jobs is about one of them: pointers back at earlier work …
_ANAPHOR = re.compile(r"\b(?:it|its|it's|them)\b(?!\s+(?:would|'d)\b)"
                      # "that"/"those"/"these" pointing back, not joining a clause ("endpoints that skip …")
                      r"|(?:^|[,.;:!?\u2014-]\s*|\b(?:and|but|so|then|now|of|for|to|in|on|with|about|from|after|"
                      r"since|like|than|undo|revert|fix|change|did|do|does|make|made|keep|redo|extend|test|cover)\s+)"
                      # … nor "that" opening a relative clause ("a test that reproduces …", "a target that builds …")
                      r"(?!that\s+(?:\w+[^su\W]s|is|was|will|would|should|can|could|does|did|has|had|gets|got|used)\b)"
                      r"(?:that|those|these|this)\b(?!\s+(?:project|repo|repository|codebase|app|chat)\b)", re.I)
_EXPLETIVE = re.compile(r"\b(?:is|was|would)\s+it\s+(?:safe|possible|ok|okay|worth|true|normal|better|bad|fine|a\s+good)\b"
                        r"|\bit\s+would\s+be\b|\bit\s+(?:takes|seems|looks\s+like)\b|\bwhat\s+would\s+it\s+take\b", re.I)
_YOUR_WORK = re.compile(r"\byour\s+(?:\w+\s+)?(?:fix|change|changes|patch|diff|commit|pr|version|code|edit|edits|approach|"
                        r"work|refactor|migration|tests?)\b|\b(?:did|didn't|have|haven't)\s+you\b|"
                        r"\b(?:why'd|why\s+did|how'd|how\s+did)\s+you\b|"
                        r"\byou\s+(?:\w+ed|did|made|wrote|ran|broke|left|forgot|chose|built|put|took|threw|pick|picked)\b|"
                        r"\b(?:after|since|with)\s+(?:your|the|that)\s+(?:last\s+)?(?:change|fix|patch|update|upgrade)\b", re.I)
_THE_WORK = re.compile(r"\b(?:the|that|this)\s+(?:change|changes|fix|patch|diff|upgrade|refactor|migration|new\s+\w+|"
                       r"(?!(?:real|right|correct|actual|best|only|main)\s)[\w-]+\s+(?:one|job|thing|task|run|change|fix))\b|\b(?:cancelled|failed|stopped|finished)\s+one\b", re.I)
_CARRY_ON = re.compile(r"^(?:\W*(?:ok|okay|nice|great|cool|good|thanks|hmm|so|and|but|now|wait|also)\b[\s,.!:\-]*)*"
                       r"(?:also|continue|resume|retry|redo|revert|undo|roll\s+back|keep\s+going|pick\s+up|finish|"
                       r"same|now\s+(?:do|make|add|also)|do\s+the\s+same|again)\b"
                       r"|\b(?:as\s+well|the\s+other|the\s+rest)\b|\b(?:do|did|does|doing|same)\s+the\s+same\b"
                       r"|\bthe\s+same\s+(?:\w+\s+){0,2}?(?:for|to|in|on|there|here|with)\b|\bsame\s+(?:fix|change|thing|treatment)\b"
                       r"|\balso\s+" + signals.WORK_VERB_BASE.pattern, re.I)
# Adverbs that often, not always, mean "compared with what the job did" ("it still fails", "X still uploads …")
# ("too" as "as well" ends its clause: "… closed venues too"; "too noisy" is a degree, not a comparison)
_STILL = re.compile(r"\b(?:too(?=\s*(?:[,.;:!?)\u2014]|$|\s+(?:please|pls|plz|then|now|thanks|right)\b))|again|still|anymore|"
                    r"any\s+more|instead|now)\b(?<!hi again)(?<!hello again)(?<!back again)", re.I)
# Feedback on a result, then what to change: "works, but …", "looks good but rename …", "close, just make …"
_FEEDBACK = re.compile(r"^\W*(?:\w+\s+){0,3}?(?:works|worked|looks\s+(?:good|great|fine|ok)|lgtm|nice|great|good|perfect|"
                       r"close|almost|better)\b[^?]*?\b(?:but|just|except|only)\b", re.I)
# Something the job brought: "why is there a new file …", "the new column"
_NEW_THING = re.compile(r"\bnew\s+(?:file|files|dependency|dependencies|dep|test|tests|column|function|class|module|import|"
                        r"flag|option|setting|migration|endpoint|warning|warnings)\b", re.I)
# Short questions about how a job went: "what happened?", "any progress?", "did the tests pass?", "what was the
# actual bug?", "so what was the root cause in the end"
_OUTCOME = re.compile(r"\bthe\s+job\b|\bwhat\s+(?:happened|went\s+wrong)\b|\bany\s+(?:progress|luck|news)\b|"
                      r"\bthe\s+(?:actual\s+|real\s+)?(?:bug|root\s+cause|cause|culprit|result|outcome|status|problem)\b|"
                      r"\bthe\s+tests?\s+(?:pass|passed|fail|failed|green|red)\b", re.I)
# … or cues of a new subject: the project as a whole, the assistant itself.
_WHOLE_PROJECT = re.compile(r"\b(?:this|the|our)\s+(?:project|repo|repository|codebase|code\s+base|app|application|"
                            r"service|team|cli|site|module|package)\b|\bwe\b|\bour\b|\bwhere(?:'s|\s+is|\s+do|\s+are)\b", re.I)
# Jobs in the plural: "the status of all my jobs", "which of my jobs …", "can I kick off two jobs …"
_JOBS_IN_GENERAL = re.compile(r"\b(?:my|all|the|both|two|three|several|multiple|many|other|these|those|your|parallel|"
                              r"concurrent)\s+jobs\b|\bjobs\s+(?:are|at\s+once|in\s+parallel|at\s+the\s+same\s+time)\b", re.I)
# The user says it is a new subject: "different issue: …", "unrelated, but …", "btw, another thing: …"
_NEW_SUBJECT = re.compile(r"^\W*(?:\w+[\s,]+){0,2}?(?:(?:a\s+)?(?:different|unrelated|separate|another|other|new)\s+"
                          r"(?:issue|thing|topic|question|bug|problem|request|subject)|unrelated|separately|on\s+another\s+note|"
                          r"changing\s+(?:the\s+)?subject)\b", re.I)
_META = re.compile(r"\b(?:are\s+you|can\s+you\s+(?:see|run|read|remember|access)|what\s+can\s+you|do\s+you\s+"
                   r"(?:keep|remember|run|change|see|store|have)|this\s+(?:chat|conversation)|how\s+many\s+jobs|"
                   r"/ask|/code|which\s+model|what\s+model|asking\s+you|ask\s+you)\b", re.I)
# Asking to be told, shown or advised, not to change anything: "can you tell me …", "walk me through …",
# "what's the difference …", "give me a plan …, I'll do it myself".
_READ_REQUEST = re.compile(r"^(?:\W*(?:ok|okay|so|hey|hi|quick\s+q(?:uestion)?|btw)\b[\s,.!:\-]*)*(?:please\s+)?"
                           r"(?:(?:can|could|would)\s+(?:you|u)\s+(?:please\s+)?)?(?:tell\s+me|show\s+me|list|summari[sz]e|remind\s+me|"
                           r"(?:talk|run)\s+me\s+through|go\s+over|clarify|"
                           r"explain|describe|walk\s+me\s+through|outline|compare|give\s+me\s+(?:a|an|the|some)\s+"
                           r"(?:rough\s+)?(?:plan|estimate|overview|summary|outline|idea|list|rundown|breakdown)|"
                           r"what's\s+the\s+difference|whats\s+the\s+difference|what\s+is\s+the\s+difference|"
                           r"difference\s+between|point\s+me)\b"
                           r"|\b(?:just\s+(?:the\s+plan|an?\s+outline|your\s+opinion|curious|thinking)|opinion\s+only|"
                           r"i'll\s+(?:do|implement|write|build)\s+(?:it|the\s+\w+\s+\w+|the\s+\w+)\s+myself|"
                           r"not\s+asking\s+(?:you\s+)?(?:to|for)|don't\s+(?:do|build|implement|change)\s+(?:it|anything)\s+yet|"
                           r"no\s+changes|(?:i\s+want|i'd\s+like|help\s+me)\s+to\s+understand|help\s+me\s+understand|"
                           r"where\s+would\s+you\s+(?:start|look)|how\s+would\s+you\s+(?:approach|go\s+about|tackle)|"
                           r"before\s+(?:we|i)\s+(?:change|touch|fix)\s+anything|"
                           r"(?:trying|want|wanted|need)\s+to\s+(?:understand|figure\s+out|know|learn)|i\s+wonder|wondering|"
                           r"curious\s+(?:about|whether|if|how|why|what))\b"
                           # "find where the page size is set", "check whether we close the handles"
                           r"|^(?:\W*(?:ok|okay|so|hey|hi|btw)\b[\s,.!:\-]*)*(?:please\s+)?(?:(?:can|could)\s+(?:you|u)\s+)?"
                           r"(?:find|locate|check|see|figure\s+out|look\s+up)\s+(?:out\s+)?(?:where|which|what|who|how|whether|if)\b",
                           re.I)
# "… and tell me if it's vulnerable", "let me know whether …": report back (an answer, unless there is running to do)
_REPORT_BACK = re.compile(r"\b(?:tell\s+me|let\s+me\s+know|report\s+back|say)\s+(?:if|whether|what|why|how|which|where|who)\b",
                          re.I)
# Running something is work for a job: "could you run the suite …", "…, then run the linters"
_RUN_ANYWHERE = re.compile(r"\b(?:can|could|would|will)\s+(?:you|u)\s+(?:please\s+)?(?:re-?)?run\b|"
                           r"(?:^|[,.;:]\s*|\b(?:and|then|please)\s+)(?:re-?)?run\s+(?:the|all|our|my|it|them|a)\b", re.I)
# A yes/no question about the code, not to the assistant: "can the api return …", "does the parser …", "is it safe …"
_ASKS_YES_NO = re.compile(r"^(?:\W*(?:ok|okay|so|hey|hi|btw|quick\s+q(?:uestion)?)\b[\s,.!:\-]*)*"
                          r"(?:can|could|will|would|does|do|is|are|was|were|should|may|might|has|have)\s+(?!(?:you|u)\b)"
                          r"(?:the|a|an|this|that|these|those|it|i|our|my|any|there)\b", re.I)
# How users report a bug without asking for anything: what they saw, what annoys them, who keeps hitting it
_OBSERVED = re.compile(r"\b(?:i\s+(?:just\s+)?(?:noticed|realized|realised|found|saw)|noticed\s+that|turns\s+out|"
                       r"for\s+some\s+reason|somehow|(?:people|users|customers|everyone|folks|support)\s+keeps?|"
                       r"every\s+(?:single\s+)?time|show(?:s)?\s+up\s+(?:again|twice)|keeps?\s+(?:on\s+)?(?!\w*thing\b)\w+ing)\b", re.I)
_COMPLAINT = re.compile(r"\b(?:annoying|confusing|unhelpful|useless|ugly|painful|terrible|awful|horrible|clunky|"
                        r"unreadable|messy|a\s+mess|hard\s+to\s+\w+|too\s+(?:slow|long|big|many|verbose|noisy|much)|"
                        r"pretty\s+(?:bad|slow|useless|unhelpful|confusing|annoying)|not\s+great|sucks?|tbh)\b", re.I)
_CLAUSE_END = re.compile(r"[,;\u2014\u2013]|[.!?](?:\s|$)|\s-\s|\s(?:and|then|&)\s+(?=(?:" + signals.VERBS + r")\b)", re.I)
_NOT_POINTING = re.compile(r"\bat\s+the\s+same\s+time\b|\blooks?\s+(?:\w+\s+)?(?:the\s+same|identical)\b|"
                           r"\bthe\s+diff(?:erence)?\s+between\b|\binstead\s+of\b", re.I)
# Something the message names itself (a code span, a path, an identifier, a flag): a pronoun after it often points
# at it ("`sync` ignores --output when the path has spaces in it"), not back at a job.
_NAMED = re.compile(r"`[^`]+`|\w+\(\)|\b\w+_\w+\b|\w+/\w+|\b\w+\.(?:py|js|ts|go|rb|rs|java|json|ya?ml|toml|md|sql|sh|cfg|ini|lock)\b|"
                    r"(?<!\w)--?[a-z][\w-]*")


def pointers(body: str) -> dict[str, bool]:
    """How a message points back at earlier work, or away from it (evidence for the follow-up head)."""
    unexpleted = _NOT_POINTING.sub(" ", _EXPLETIVE.sub(" ", body))
    # A pronoun in the first clause points outside the message ("it still fails", "can you make it …"); one in a
    # later clause, or after something the message names, often points at that ("X ignores NO_COLOR, it's
    # unreadable", "look at why the image is 2GB and shrink it"). An opening "nice." or "ok," is no clause of its own.
    said = signals.LEADING_ACK.sub("", unexpleted)
    end = _CLAUSE_END.search(said)
    first, rest = (said[:end.start()], said[end.end():]) if end else (said, "")
    named = _NAMED.search(first)
    before_named = first[:named.start()] if named else first
    anaphor = bool(_ANAPHOR.search(unexpleted))
    anaphor_first = bool(_ANAPHOR.search(before_named))
    # "still crashes for me …", "it still fails": no subject of its own, or a pronoun, before "still"
    still_first = bool(re.match(r"^\W*(?:(?:it|this|that|they|which|and|but|yeah|yes|hmm|no|nope|now)\W+){0,2}?still\b",
                                before_named, re.I))
    return {"anaphor": anaphor, "anaphor_first": anaphor_first, "anaphor_later": anaphor and not anaphor_first,
            "still_first": still_first,
            "jobs_in_general": bool(_JOBS_IN_GENERAL.search(body)), "new_subject": bool(_NEW_SUBJECT.search(body)), "your_work": bool(_YOUR_WORK.search(body)),
            "the_work": bool(_THE_WORK.search(unexpleted)), "carry_on": bool(_CARRY_ON.search(unexpleted)),
            "still": bool(_STILL.search(unexpleted)), "feedback": bool(_FEEDBACK.search(body)),
            "new_thing": bool(_NEW_THING.search(body)),
            "outcome": bool(_OUTCOME.search(body)) and not _JOBS_IN_GENERAL.search(body) and len(_words(body)) <= 10 and not re.search(r"[`_/()]|\w\.\w", body),
            "whole_project": bool(_WHOLE_PROJECT.search(body)), "meta": bool(_META.search(body))}


def _words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def head_features(head: str, feats: dict[str, float]) -> dict[str, float]:
    prefixes = HEAD_FEATURES[head]
    return feats if prefixes is None else {k: v for k, v in feats.items() if k.startswith(prefixes)}


def features(text: str, jobs: list[Job]) -> dict[str, float]:
    """Sparse features of a message in its conversation: words, word pairs, character n-grams and
    the surface signals the rules use (as evidence, not verdicts)."""
    body = " ".join(text.split())
    words = _words(body)
    f: dict[str, float] = {"bias": 1.0}
    for w in words:
        f["w:" + w] = 1.0
    for a, b in zip(words, words[1:]):
        f[f"b:{a}_{b}"] = 1.0
    if words:
        f["first:" + words[0]] = 1.0
        f["first2:" + "_".join(words[:2])] = 1.0
    for w in set(words):
        padded = f"<{w}>"
        for n in (3, 4):
            for i in range(len(padded) - n + 1):
                f["c:" + padded[i:i + n]] = 0.5
    shape = {
        "question_start": signals.QUESTION_START.match(body), "one_question": signals.one_question(body),
        "ends_question": body.endswith("?"), "has_question": "?" in body,
        "imperative": signals.IMPERATIVE.match(body), "polite_order": signals.POLITE_ORDER.match(body),
        "work_verb": signals.WORK_VERB.search(body), "suggestion": signals.SUGGESTION.match(body),
        "read_only": signals.READ_ONLY.search(body), "pasted_log": signals.PASTED_LOG.search(text),
        "small_talk": signals.SMALL_TALK.match(body), "modal": _MODAL.search(body),
        "conditional_work": _CONDITIONAL_WORK.search(body), "problem": _PROBLEM.search(body),
        "several_sentences": re.search(r"[.?!;:]\s+\S", body), "several_lines": "\n" in text.strip(),
        "short": len(words) <= 3,
        "later_order": signals.LATER_ORDER.search(body),
        "read_request": _READ_REQUEST.search(body), "meta": _META.search(body) or _JOBS_IN_GENERAL.search(body),
        "report_back": _REPORT_BACK.search(body), "run_anywhere": _RUN_ANYWHERE.search(body),
        "asks_yes_no": _ASKS_YES_NO.match(body), "observed": _OBSERVED.search(body), "complaint": _COMPLAINT.search(body),
        "run_order": signals.RUN_ORDER.match(body), "find_and_fix": signals.FIND_AND_FIX.search(body),
        "log_no_question": signals.PASTED_LOG.search(text) and "?" not in signals.log_prose(text),
        "log_and_question": signals.PASTED_LOG.search(text) and re.search(r"\?\s*$", text, re.M),
        "log_and_order": signals.PASTED_LOG.search(text) and signals.WORK_VERB_BASE.search(body),
    }
    f.update({"s:" + name: 1.0 for name, present in shape.items() if present})
    if jobs:
        f["ctx:jobs"] = 1.0
        ref = signals.find_job_reference(body, jobs)
        if ref is not None:
            # One shared title word ("cards", "upload") is weak evidence: the word may name something else.
            weak = not ref.explicit and signals.title_overlap(body, ref.job) < 2
            f["ctx:ref_" + ("explicit" if ref.explicit else "title_weak" if weak else "title")] = 1.0
            f["ctx:ref_state_" + ref.job.state] = 1.0
        f["ctx:title_overlap"] = min(max(signals.title_overlap(body, j) for j in jobs), 3) / 3
        f["ctx:about_done_work"] = 1.0 if signals.ABOUT_DONE_WORK.search(body) else 0.0
        f["ctx:follow_words"] = min(len(_FOLLOW_WORDS.findall(body)), 3) / 3
        f["ctx:points_back"] = 1.0 if signals.points_back(body) else 0.0
        f["ctx:latest_" + signals.latest(jobs).state] = 1.0
        # With a pasted log, "fix this", "what do these mean" point at the log, not at a job.
        points = pointers(re.sub(r"\b(?:this|these)\b", " ", body, flags=re.I) if signals.PASTED_LOG.search(text) else body)
        f.update({"ctx:p_" + name: 1.0 for name, present in points.items() if present})
        backward = ref is not None or f["ctx:title_overlap"] > 0 or any(
            points[k] for k in ("anaphor", "your_work", "the_work", "carry_on", "still", "feedback", "new_thing", "outcome"))
        if not backward:
            f["ctx:points_nowhere"] = 1.0
        for name in [k for k in f if k.startswith("s:")]:  # the same shape reads differently once jobs exist
            f["ctx+" + name] = 1.0
    return f


@dataclass(frozen=True)
class Guess:
    work: bool       # asks for changes (a job), not an answer
    followup: bool   # about one of the conversation's jobs
    certainty: float = 1.0  # 0 (a coin toss) … 1 (sure): the least sure of the heads that decided

    def sure(self, threshold: float) -> bool:
        return self.certainty >= threshold


class RouteClassifier:
    def __init__(self, heads: dict[str, dict]):
        missing = [h for h in HEADS if h not in heads]
        if missing:
            raise ValueError(f"route classifier weights lack the head(s) {missing}; retrain with bench/train_router.py")
        self.heads = {name: (float(h["bias"]), {k: float(v) for k, v in h["weights"].items()}) for name, h in heads.items()}

    @classmethod
    def load(cls, path: Path = WEIGHTS_PATH) -> "RouteClassifier":
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the route classifier weights {path} ({exc}); "
                             "reinstall the package or retrain with bench/train_router.py") from exc
        if data.get("format") != FORMAT:
            raise ValueError(f"{path} has format {data.get('format')!r}, this code reads {FORMAT}; "
                             "retrain with bench/train_router.py")
        return cls(data["heads"])

    def probability(self, head: str, feats: dict[str, float]) -> float:
        bias, weights = self.heads[head]
        z = bias + sum(value * weights.get(name, 0.0) for name, value in head_features(head, feats).items())
        return 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))

    def predict(self, text: str, jobs: list[Job]) -> Guess:
        feats = features(text, jobs)
        p_work = self.probability("work", feats)
        if feats.get("s:read_only") == 1.0 and p_work >= 0.5:
            # "… don't change anything", "not asking for a fix": the user said it, whatever else the words suggest
            # (on every labelled set, each such message wants an answer).
            p_work = min(1.0 - p_work, 0.499)
        certainty = abs(2 * p_work - 1)
        if not jobs:
            return Guess(p_work >= 0.5, False, certainty)
        if feats.get("ctx:ref_explicit") == 1.0:  # "job 2", "the last one": about that job, whatever the words
            return Guess(p_work >= 0.5, True, certainty)
        if feats.get("ctx:p_jobs_in_general") == 1.0 or feats.get("ctx:p_new_subject") == 1.0:
            # "which of my jobs are still running?", "can I start two jobs at once?": about the jobs, not one of them;
            # "different issue: …": the user says so (on every labelled set, no such message follows a job up).
            return Guess(p_work >= 0.5, False, certainty)
        if feats.get("ctx:points_nowhere") == 1.0:
            # Nothing points back at a job (no pronoun, no "your change", no "also", no title, no job named):
            # a new subject, however much the conversation has done so far. On the labelled set this never
            # misroutes a follow-up; the head, trained on far fewer conversations, did.
            return Guess(p_work >= 0.5, False, certainty)
        p_followup = self.probability("followup", feats)
        return Guess(p_work >= 0.5, p_followup >= 0.5, min(certainty, abs(2 * p_followup - 1)))


@functools.lru_cache(maxsize=1)
def shipped_classifier() -> RouteClassifier:
    """The classifier trained on the labelled set, read once per process."""
    return RouteClassifier.load()
