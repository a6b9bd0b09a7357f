"""Routing benchmark on the labelled set (bench/routing_set.jsonl): how often each way of routing is right.

    .venv/bin/python bench/routing.py [--embedded] [--show-wrong]

Ways of routing, each on the tuning and the held-out part, per class and overall:
  rules        the first-pass rules alone: right, wrong, or left open (to the model or classifier)
  classifier   rules + the shipped classifier: what the product does with the embedded default model
  model        rules + the configured router model (classifier only when its reply is unreadable): a real
               endpoint when OPENAI_API_KEY / OPENAI_BASE_URL is set, else the scripted model server
               replying with each message's labelled route (an oracle: it checks the plumbing — prompt,
               job numbers, chaining refusals — not a model's judgement)
  embedded     (--embedded) rules + the bundled Gemma 3 270M asked as the router model, the way routing
               worked before the classifier: the baseline the classifier replaces
A route is right when its kind matches and, for a follow-up, its job number too. Also measured: the time
the rules and the classifier take per message, against the model's time per message.
Prints tables and writes bench/results/routing.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.config import load_settings  # noqa: E402
from assistant.conversation.route_classifier import WEIGHTS_PATH, RouteClassifier  # noqa: E402
from assistant.conversation.router import Route, route_message  # noqa: E402
from assistant.llm.client import ModelClient  # noqa: E402
from assistant.testing.scripted_model import Reply, ScriptedModelServer  # noqa: E402
from bench.routing_set import SET_PATH, Item, load_set  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "routing.json"
ROUTER_PROMPT_MARKER = "You route messages"
SPLITS = ("tune", "heldout")


def routed_job_number(item: Item, route: Route) -> int | None:
    return next((j["number"] for j in item.jobs if f"j{j['number']}" == route.job_id), None)


def outcome(item: Item, route: Route, rules_only: bool) -> str:
    """right | wrong | open (the rules left it to the model or classifier)."""
    if rules_only and route.decided_by == "fallback":
        return "open"
    return "right" if (route.kind, routed_job_number(item, route)) == (item.route, item.job) else "wrong"


def run_mode(items: list[Item], route_one: Callable[[Item], Route], rules_only: bool = False) -> dict:
    counts: dict[str, dict[str, Counter]] = {s: defaultdict(Counter) for s in SPLITS}
    wrong, seconds = [], defaultdict(list)
    for item in items:
        started = time.perf_counter()
        route = route_one(item)
        seconds[route.decided_by].append(time.perf_counter() - started)
        result = outcome(item, route, rules_only)
        counts[item.split][item.cls][result] += 1
        counts[item.split]["(all)"][result] += 1
        if result == "wrong":
            wrong.append({"id": item.id, "split": item.split, "class": item.cls, "text": item.text,
                          "expected": [item.route, item.job], "got": [route.kind, routed_job_number(item, route)],
                          "decided_by": route.decided_by, "reason": route.reason})
    return {"counts": {s: {c: dict(n) for c, n in sorted(by_class.items())} for s, by_class in counts.items()},
            "accuracy": {s: _accuracy(counts[s]["(all)"]) for s in SPLITS},
            "decided_by": {d: len(t) for d, t in seconds.items()},
            "median_ms_by_decider": {d: statistics.median(t) * 1000 for d, t in seconds.items()}, "wrong": wrong}


def _accuracy(c: Counter) -> float:
    total = sum(c.values())
    return c["right"] / total if total else float("nan")


def router(*, classifier: RouteClassifier | None = None, model: ModelClient | None = None,
           prepare: Callable[[Item], None] | None = None, constrained: bool = False) -> Callable[[Item], Route]:
    def route_one(item: Item) -> Route:
        if prepare is not None:
            prepare(item)
        return route_message(item.text, item.job_records(), model, repo=item.repo, classifier=classifier,
                             constrained=constrained)
    return route_one


def scripted_oracle():
    server = ScriptedModelServer().start()

    def prepare(item: Item) -> None:
        server.reset()
        decision = {"route": "job" if item.route in ("job", "followup_job") else "answer",
                    "followup": item.route.startswith("followup"), "job": str(item.job) if item.job else None,
                    "reason": "the labelled route"}
        server.when_system_contains(ROUTER_PROMPT_MARKER, [Reply.text(json.dumps(decision))])
    settings = load_settings({"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "bench", "ASSISTANT_MODEL": "scripted",
                              "ASSISTANT_DATA_DIR": tempfile.mkdtemp(prefix="routing-bench-"),
                              "ASSISTANT_CONFIG": "/nonexistent/assistant.toml", "ASSISTANT_MODEL_MAX_RETRIES": "0"})
    return ModelClient(settings), prepare, server, "scripted oracle (replies with the labelled route)"


def embedded_model():
    from assistant.llm.local import LocalModelConfig, LocalModelServer
    data_dir = Path(tempfile.mkdtemp(prefix="routing-bench-"))
    server = LocalModelServer(LocalModelConfig(model_path=None, data_dir=data_dir))
    base_url = server.start()
    settings = load_settings({"ASSISTANT_DATA_DIR": str(data_dir), "ASSISTANT_CONFIG": str(data_dir / "none.toml"),
                              "ASSISTANT_MODEL": server.model_name, "ASSISTANT_MODEL_MAX_RETRIES": "0"})
    return ModelClient(settings, base_url=base_url, api_key=server.api_key), server


def print_mode(name: str, description: str, result: dict) -> None:
    print(f"\n{name}: {description}")
    header = f"{'class':18} " + " ".join(f"{s + ' right/wrong/open':>24}" for s in SPLITS)
    print(header)
    print("-" * len(header))
    classes = sorted({c for s in SPLITS for c in result["counts"][s]} - {"(all)"}) + ["(all)"]
    for cls in classes:
        cells = []
        for split in SPLITS:
            c = Counter(result["counts"][split].get(cls, {}))
            total = sum(c.values())
            cells.append(f"{c['right']:>4}/{c['wrong']:>3}/{c['open']:>3} of {total:>3} "
                         f"{(c['right'] / total if total else float('nan')):>6.0%}")
        print(f"{cls:18} " + " ".join(f"{cell:>24}" for cell in cells))
    print("decided by: " + ", ".join(f"{d} {n} (median {result['median_ms_by_decider'][d]:.3f} ms per message)"
                                     for d, n in result["decided_by"].items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedded", action="store_true", help="also route with the bundled Gemma 3 270M (slow)")
    parser.add_argument("--show-wrong", action="store_true", help="list every wrong route")
    args = parser.parse_args()
    items = load_set()

    started = time.perf_counter()
    classifier = RouteClassifier.load()
    load_ms = (time.perf_counter() - started) * 1000

    settings = load_settings()
    if settings.uses_local_model:
        client, prepare, server, endpoint = scripted_oracle()
        closers = [server.stop]
    else:
        client, prepare, endpoint, closers = ModelClient(settings), None, settings.openai_base_url or "OpenAI", []
    modes: dict[str, dict] = {}
    try:
        modes["rules"] = {"description": "first-pass rules alone", **run_mode(items, router(), rules_only=True)}
        modes["classifier"] = {"description": "rules + shipped classifier (the embedded-model default)",
                               **run_mode(items, router(classifier=classifier))}
        modes["model"] = {"description": f"rules + router model {client.model_for('router')} at {endpoint}; "
                                         "classifier when its reply is unreadable",
                          **run_mode(items, router(classifier=classifier, model=client, prepare=prepare,
                                                   constrained=settings.tool_protocol == "grammar"))}
        if args.embedded:
            local_client, local_server = embedded_model()
            closers.append(local_server.stop)
            modes["embedded"] = {"description": "rules + the bundled Gemma 3 270M as router model (no classifier)",
                                 **run_mode(items, router(model=local_client, constrained=True))}
    finally:
        for close in closers:
            close()

    for name, result in modes.items():
        print_mode(name, result["description"], result)
        if args.show_wrong:
            for w in result["wrong"]:
                print(f"  wrong {w['id']} ({w['split']}, {w['class']}): {w['text'][:70]!r} expected {w['expected']} "
                      f"got {w['got']} by {w['decided_by']}")
    print("\nright on the held-out part: " + ", ".join(f"{name} {r['accuracy']['heldout']:.0%}" for name, r in modes.items())
          + " (rules: the rest is left open, none wrong is the bar)")
    print(f"classifier: loaded in {load_ms:.1f} ms; trained on "
          f"{json.loads(WEIGHTS_PATH.read_text())['trained_on']['items']} tuning items")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "set": {"path": str(SET_PATH.relative_to(SET_PATH.parents[1])), "items": len(items),
                **{s: sum(1 for i in items if i.split == s) for s in SPLITS}},
        "classifier_load_ms": load_ms, "machine": {"cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0]},
        "modes": modes}, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
