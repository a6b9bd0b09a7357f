"""The labelled routing set (bench/routing_set.jsonl) holds the rules and the shipped classifier to their bars."""
import json
from collections import Counter

from assistant.conversation.route_classifier import WEIGHTS_PATH, shipped_classifier
from assistant.conversation.router import route_message
from bench.routing_set import CLASSIFIER_ROUTES, load_set, split_of
from bench.train_router import train

ITEMS = load_set()


def got(item, route):
    number = next((j["number"] for j in item.jobs if f"j{j['number']}" == route.job_id), None)
    return route.kind, number


def test_the_set_is_big_enough_and_its_held_out_part_is_the_seeded_hash():
    assert len(ITEMS) >= 150
    assert len({i.id for i in ITEMS}) == len(ITEMS)
    assert all(i.split == split_of(i.id) for i in ITEMS)
    counts = Counter(i.split for i in ITEMS)
    assert counts["heldout"] >= 80 and counts["tune"] >= 150
    assert {i.route for i in ITEMS} == {"answer", "job", "followup_answer", "followup_job", "steer"}
    assert not [i.id for i in ITEMS if i.route == "steer" and i.split != "tune"]  # steer items were tuned on only
    assert {len(i.jobs) for i in ITEMS} == {0, 1, 2, 3}


def test_rules_never_misroute_on_the_whole_set():
    decided, wrong = 0, []
    for item in ITEMS:
        route = route_message(item.text, item.job_records(), None, repo=item.repo)
        if route.decided_by == "fallback":
            continue
        decided += 1
        if got(item, route) != (item.route, item.job):
            wrong.append((item.id, item.text, (item.route, item.job), got(item, route), route.reason))
    assert wrong == []
    assert decided >= 140   # about half: a rule change that gives up coverage shows here


def test_rules_decide_every_steer_item_of_the_set():
    steers = [i for i in ITEMS if i.route == "steer"]
    assert len(steers) >= 12
    routes = [route_message(i.text, i.job_records(), None, repo=i.repo) for i in steers]
    assert [(i.id, got(i, r)) for i, r in zip(steers, routes)] == [(i.id, ("steer", i.job)) for i in steers]


def test_the_shipped_classifier_routes_90_percent_of_the_held_out_part_right():
    held_out = [i for i in ITEMS if i.split == "heldout"]
    right = sum(got(i, route_message(i.text, i.job_records(), None, repo=i.repo, classifier=shipped_classifier()))
                == (i.route, i.job) for i in held_out)
    assert right / len(held_out) >= 0.90, f"{right} of {len(held_out)} right"


def test_the_shipped_weights_are_what_the_trainer_makes_from_the_tuning_part():
    model = train([i for i in ITEMS if i.split == "tune"], log=lambda _line: None)
    # The classifier has no steer head: it learns from the tuning items of the routes it can say.
    assert model["trained_on"]["items"] == sum(1 for i in ITEMS if i.split == "tune" and i.route in CLASSIFIER_ROUTES)
    assert json.dumps(model, indent=0, sort_keys=True) + "\n" == WEIGHTS_PATH.read_text(), \
        "the shipped weights are stale: run .venv/bin/python bench/train_router.py"
