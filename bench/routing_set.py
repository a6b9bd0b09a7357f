"""The labelled routing set (bench/routing_set.jsonl): loading, the fixed held-out split, and the
conversation's jobs as store records.

Each line: id, split (tune | heldout | dev2 | dev3), class, route (answer | job | followup_answer | followup_job |
steer), job (the expected job number of a follow-up or a steer, else null), text, repo (the conversation's repository) and
jobs (number, title, state, repo of each job the conversation has so far).

The held-out part was fixed before any rule or classifier was tuned: an item is held out when the first
byte of sha256("routing-split-1:" + id) is divisible by 3 (about one in three). `split_of` recomputes it,
and a test checks every line against it.

The dev2 part (ids d001 …) was written later, apart from everything the router was tuned on, in the words
real users write (bug reports stated as facts, pasted tracebacks, "find and fix …", "run the tests and tell
me …", "also …" follow-ups, questions about a job by pronoun, typos): it measures whether routing carries
over to messages unlike the training set. Items r438 … r564 were added in round 2, in new words, for the kinds of
error dev_v2 showed (questions, meta questions and small talk in conversations that have jobs but are not about
them; "tell me / list / walk me through / what's the difference" asks; follow-ups by pronoun, "also …", "the
cancelled one"); the seeded hash put a third of them in the held-out part like any other item. Items r565 …
r679 were added in round 3, written fresh (not paraphrases of any dev or v3 message), for the causes of error the
dev sets and v3 showed: bugs told as observations or complaints with no request, questions with no "?", "find where
/ check whether / tell me if" asks, running and investigating that ends in work, pasted errors with and without a
question, follow-ups after an acknowledgement ("great. now cover that …") or by "also", pronouns that point at
what the message itself names, new subjects and questions about jobs in general while jobs exist, small talk; the
hash again put about a third of them in the held-out part. The dev3 part (ids e001 …), written after the first
changes and likewise never trained on, holds longer, chattier messages (greetings, context, several sentences).

Items s001 … s016 (class steer) were added with the steer route, in the tuning part only: ids whose seeded hash
would have held them out were skipped (s004, s005), so no held-out item was written with the rule in mind.
The rules are held to them (never misroute); the classifier does not train on them (CLASSIFIER_ROUTES).

bench/routing_dev_v2.jsonl (split dev_v2, ids h001 …) is a third set of 120 messages written by someone else,
independently, in real users' words, half of them in conversations that already have jobs but are not about
them. Round 1's router scored 84% on it unseen; it was then used for tuning decisions in round 2 (what kinds of
error to address, with new training messages in other words). It is never trained on, but no longer unseen:
a set the router has never seen decides whether routing carries over.

bench/routing_heldout_v3.jsonl (split heldout3, ids k001 …), written apart by someone else, was held out through
round 2; in round 3 it became a development set like dev_v2 (its errors were studied; it is never trained on).
The held-out set is now v4, written independently and kept out of this repository's tuning.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from assistant.store import Job

SET_PATH = Path(__file__).resolve().parent / "routing_set.jsonl"
DEV_V2_PATH = Path(__file__).resolve().parent / "routing_dev_v2.jsonl"
ROUTES = ("answer", "job", "followup_answer", "followup_job", "steer")
# What the shipped classifier can say: it has no steer head (a message to a running job), so it never trains on one.
CLASSIFIER_ROUTES = ROUTES[:4]


def split_of(item_id: str) -> str:
    if item_id.startswith("d"):
        return "dev2"
    if item_id.startswith("e"):
        return "dev3"
    return "heldout" if hashlib.sha256(f"routing-split-1:{item_id}".encode()).digest()[0] % 3 == 0 else "tune"


@dataclass(frozen=True)
class Item:
    id: str
    split: str
    cls: str
    route: str
    job: int | None
    text: str
    repo: str
    jobs: tuple[dict, ...]

    def job_records(self) -> list[Job]:
        """The conversation's jobs as the store holds them (ids are "j<number>")."""
        return [Job(id=f"j{j['number']}", number=j["number"], title=j["title"], task=j["title"], state=j["state"],
                    repo=j["repo"]) for j in self.jobs]


def load_set(path: Path = SET_PATH, split: str | None = None) -> list[Item]:
    items = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        raw = json.loads(line)
        item = Item(id=raw["id"], split=raw["split"], cls=raw["class"], route=raw["route"], job=raw["job"],
                    text=raw["text"], repo=raw["repo"], jobs=tuple(raw["jobs"]))
        if item.route not in ROUTES:
            raise ValueError(f"{path}:{line_no}: route must be one of {ROUTES}, got {item.route!r}")
        if (item.job is not None) != (item.route.startswith("followup") or item.route == "steer"):
            raise ValueError(f"{path}:{line_no}: a follow-up or a steer names its job number, other routes none")
        if split is None or item.split == split:
            items.append(item)
    return items
