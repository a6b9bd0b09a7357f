"""Routing benchmark: how often each way of routing is right on a labelled set, and what it costs per message.

    .venv/bin/python bench/routing.py [--set FILE] [--modes rules,classifier,model,shipped] [--show-wrong]
                                      [--local-model GGUF] [--oracle]

Without --set: the labelled set bench/routing_set.jsonl, by its parts (tune: what the classifier is trained
on; heldout: fixed by a seeded hash, paraphrase-like; dev2 and dev3: written apart, in real users' words),
and dev_v2 (bench/routing_dev_v2.jsonl: written independently by someone else; used for tuning decisions in
round 2, never trained on). With
--set FILE: any JSON-lines file in the same format (keys id, split, class, route, job, text, repo, jobs;
`split` may be anything, the file is scored as one part), e.g. a set the router has never seen.
bench/routing_heldout_v3.jsonl was held out through round 2; in round 3 it became a development set (its errors
were studied to find causes of misroutes; it is never trained on): the held-out set is now v4, written apart.

Ways of routing, per route, per class and overall:
  rules       the first-pass rules alone: right, wrong, or left open (to the model or classifier)
  classifier  rules + the shipped classifier (no model)
  model       rules + the router model alone (an unreadable reply counts as answered)
  shipped     what the product does: with the embedded default model, rules, then the classifier (the model
              only where the classifier is less sure than --model-below, by default never); with a
              configured endpoint, rules then that model
  oracle      (--oracle) rules + the scripted model server replying with each message's labelled route: checks
              the plumbing (prompt, job numbers, chaining refusals), not a model's judgement
The model is the configured endpoint when OPENAI_API_KEY / OPENAI_BASE_URL is set, else the embedded model,
started here the way the product starts it (ASSISTANT_LOCAL_MODEL or the packaged default; --local-model
overrides). A route is right when its kind matches and, for a follow-up, its job number too. Also measured:
the time each way adds per message (mean, median, 90th percentile) and by who decided.
Prints tables and writes bench/results/routing.json (or routing-<set name>.json for --set).
"""
from __future__ import annotations

import argparse
import json
import math
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
from assistant.conversation.router import EMBEDDED_MODEL_BELOW, ROUTER_PROMPT_MARKER, Route, route_message  # noqa: E402
from assistant.llm.client import ModelClient  # noqa: E402
from assistant.testing.scripted_model import Reply, ScriptedModelServer  # noqa: E402
from bench.routing_set import DEV_V2_PATH, ROUTES, SET_PATH, Item, load_set  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODES = ("rules", "classifier", "model", "shipped")


def routed_job_number(item: Item, route: Route) -> int | None:
    return next((j["number"] for j in item.jobs if f"j{j['number']}" == route.job_id), None)


def outcome(item: Item, route: Route, rules_only: bool) -> str:
    """right | wrong | open (the rules left it to the model or classifier)."""
    if rules_only and route.decided_by == "fallback":
        return "open"
    return "right" if (route.kind, routed_job_number(item, route)) == (item.route, item.job) else "wrong"


def _ms_summary(seconds: list[float]) -> dict:
    if not seconds:
        return {"n": 0}
    ordered = sorted(seconds)
    return {"n": len(ordered), "mean_ms": statistics.fmean(ordered) * 1000, "median_ms": statistics.median(ordered) * 1000,
            "p90_ms": ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)] * 1000,
            "max_ms": ordered[-1] * 1000}


def run_mode(items: list[Item], splits: list[str], route_one: Callable[[Item], Route], rules_only: bool = False) -> dict:
    counts: dict[str, dict[str, Counter]] = {s: defaultdict(Counter) for s in splits}
    by_route: dict[str, dict[str, Counter]] = {s: defaultdict(Counter) for s in splits}
    wrong, seconds, all_seconds = [], defaultdict(list), []
    for n, item in enumerate(items, 1):
        if n % 20 == 0:
            print(f"  … {n}/{len(items)}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        route = route_one(item)
        took = time.perf_counter() - started
        seconds[route.decided_by].append(took)
        all_seconds.append(took)
        result = outcome(item, route, rules_only)
        for group in (counts[item.split][item.cls], counts[item.split]["(all)"], by_route[item.split][item.route]):
            group[result] += 1
        if result == "wrong":
            wrong.append({"id": item.id, "split": item.split, "class": item.cls, "text": item.text,
                          "expected": [item.route, item.job], "got": [route.kind, routed_job_number(item, route)],
                          "decided_by": route.decided_by, "reason": route.reason})
    return {"counts": {s: {c: dict(n) for c, n in sorted(by_class.items())} for s, by_class in counts.items()},
            "by_route": {s: {r: dict(n) for r, n in sorted(rs.items())} for s, rs in by_route.items()},
            "accuracy": {s: _accuracy(counts[s]["(all)"]) for s in splits},
            "decided_by": {d: len(t) for d, t in seconds.items()},
            "time": _ms_summary(all_seconds),
            "time_by_decider": {d: _ms_summary(t) for d, t in seconds.items()}, "wrong": wrong}


def _accuracy(c: Counter) -> float:
    total = sum(c.values())
    return c["right"] / total if total else float("nan")


def router(*, classifier: RouteClassifier | None = None, model: ModelClient | None = None,
           prepare: Callable[[Item], None] | None = None, constrained: bool = False,
           embedded: bool = False, model_below: float | None = None) -> Callable[[Item], Route]:
    below = {} if model_below is None else {"model_below": model_below}

    def route_one(item: Item) -> Route:
        if prepare is not None:
            prepare(item)
        return route_message(item.text, item.job_records(), model, repo=item.repo, classifier=classifier,
                             constrained=constrained, embedded=embedded, **below)
    return route_one


def scripted_oracle():
    server = ScriptedModelServer().start()

    def prepare(item: Item) -> None:
        server.reset()
        decision = {"route": item.route, "job": item.job}
        server.when_system_contains(ROUTER_PROMPT_MARKER, [Reply.text(json.dumps(decision))])
    settings = load_settings({"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "bench", "ASSISTANT_MODEL": "scripted",
                              "ASSISTANT_DATA_DIR": tempfile.mkdtemp(prefix="routing-bench-"),
                              "ASSISTANT_CONFIG": "/nonexistent/assistant.toml", "ASSISTANT_MODEL_MAX_RETRIES": "0"})
    return ModelClient(settings), prepare, server


def embedded_model(settings, model_path: Path | None):
    """The embedded model, started the way the product starts it (assistant/core.py)."""
    from assistant.llm.local import LocalModelConfig, LocalModelServer
    data_dir = Path(tempfile.mkdtemp(prefix="routing-bench-"))
    config = LocalModelConfig.from_settings(settings)
    config.data_dir = data_dir
    if model_path is not None:
        config.model_path = model_path
    server = LocalModelServer(config)
    started = time.perf_counter()
    base_url = server.start(timeout_s=600)
    start_s = time.perf_counter() - started
    local = settings.model_copy(update={"model": server.model_name, "router_model": None, "answer_model": None,
                                        "agent_model": None, "summary_model": None, "model_max_retries": 0,
                                        "data_dir": data_dir})
    client = ModelClient(local, base_url=base_url, api_key=server.api_key, ensure_server=server.ensure_running)
    return client, server, start_s


def print_mode(name: str, description: str, result: dict, splits: list[str]) -> None:
    print(f"\n{name}: {description}")
    header = f"{'class / route':22} " + " ".join(f"{s + ' right/wrong/open':>26}" for s in splits)
    print(header)
    print("-" * len(header))

    def row(label: str, per_split: list[dict]) -> None:
        cells = []
        for c in map(Counter, per_split):
            total = sum(c.values())
            cells.append(f"{c['right']:>4}/{c['wrong']:>3}/{c['open']:>3} of {total:>3} "
                         f"{(c['right'] / total if total else float('nan')):>6.0%}")
        print(f"{label:22} " + " ".join(f"{cell:>26}" for cell in cells))

    classes = sorted({c for s in splits for c in result["counts"][s]} - {"(all)"})
    for cls in classes:
        row(cls, [result["counts"][s].get(cls, {}) for s in splits])
    print("-" * len(header))
    for r in ROUTES:
        row(f"route {r}", [result["by_route"][s].get(r, {}) for s in splits])
    row("(all)", [result["counts"][s].get("(all)", {}) for s in splits])
    t = result["time"]
    print(f"time per message: mean {t['mean_ms']:.1f} ms, median {t['median_ms']:.1f} ms, p90 {t['p90_ms']:.1f} ms, "
          f"max {t['max_ms']:.1f} ms")
    print("decided by: " + ", ".join(f"{d} {n} (median {result['time_by_decider'][d]['median_ms']:.1f} ms)"
                                     for d, n in result["decided_by"].items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", type=Path, help="score this JSON-lines file (same format) instead of the labelled set")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--local-model", type=Path, help="a GGUF for the embedded model (default: the product's)")
    parser.add_argument("--oracle", action="store_true", help="also route with the scripted oracle (plumbing check)")
    parser.add_argument("--show-wrong", action="store_true", help="list every wrong route")
    parser.add_argument("--model-below", type=float, help="shipped mode with the embedded model: ask the model "
                        "where the classifier's certainty (0..1) is below this (default: the product's setting)")
    parser.add_argument("--splits", help="only these parts of the labelled set, comma-separated (e.g. dev2,dev3)")
    parser.add_argument("--out", type=Path, help="where to write the JSON results")
    args = parser.parse_args()
    modes_asked = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes_asked if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")

    path = args.set or SET_PATH
    try:
        items = load_set(path) + ([] if args.set else load_set(DEV_V2_PATH))
    except (OSError, ValueError, KeyError) as exc:
        print(f"cannot read the labelled set {path}: {exc}", file=sys.stderr)
        return 2
    if args.set:
        items = [Item(**{**i.__dict__, "split": "set"}) for i in items]
        splits = ["set"]
    else:
        splits = [s for s in ("tune", "heldout", "dev2", "dev3", "dev_v2") if any(i.split == s for i in items)]
        if args.splits:
            splits = [s for s in splits if s in args.splits.split(",")]
            items = [i for i in items if i.split in splits]

    started = time.perf_counter()
    classifier = RouteClassifier.load()
    load_ms = (time.perf_counter() - started) * 1000

    settings = load_settings()
    closers: list[Callable[[], None]] = []
    modes: dict[str, dict] = {}
    model_start_s = None
    try:
        client = None
        if any(m in modes_asked for m in ("model", "shipped")):
            if settings.uses_local_model:
                client, server, model_start_s = embedded_model(settings, args.local_model)
                closers.append(server.stop)
                endpoint = f"the embedded model {client.model_for('router')} (started in {model_start_s:.1f} s)"
            else:
                client = ModelClient(settings)
                endpoint = f"{client.model_for('router')} at {settings.openai_base_url or 'OpenAI'}"
        embedded = settings.uses_local_model
        constrained = embedded or settings.tool_protocol == "grammar"
        if client is not None:  # one untimed call: the model loads its weights and the prompt's prefix once
            route_message("hello there, what does this project do?", [], client, classifier=None, constrained=constrained)
        if "rules" in modes_asked:
            modes["rules"] = {"description": "first-pass rules alone",
                              **run_mode(items, splits, router(), rules_only=True)}
        if "classifier" in modes_asked:
            modes["classifier"] = {"description": "rules + shipped classifier (no model)",
                                   **run_mode(items, splits, router(classifier=classifier))}
        if "model" in modes_asked:
            modes["model"] = {"description": f"rules + router model alone: {endpoint}",
                              **run_mode(items, splits, router(model=client, constrained=constrained))}
        if "shipped" in modes_asked:
            below = EMBEDDED_MODEL_BELOW if args.model_below is None else args.model_below
            how = (f"rules, then the classifier; the model where the classifier's certainty < {below:g}" if embedded
                   else "rules, then the model")
            modes["shipped"] = {"description": f"what the product ships ({how}): {endpoint}",
                                **run_mode(items, splits, router(classifier=classifier, model=client,
                                                                 constrained=constrained, embedded=embedded,
                                                                 model_below=args.model_below))}
        if args.oracle:
            oracle, prepare, oracle_server = scripted_oracle()
            closers.append(oracle_server.stop)
            modes["oracle"] = {"description": "rules + scripted oracle replying with the labelled route (plumbing)",
                               **run_mode(items, splits, router(classifier=classifier, model=oracle, prepare=prepare))}
    finally:
        for close in closers:
            close()

    for name, result in modes.items():
        print_mode(name, result["description"], result, splits)
        if args.show_wrong:
            for w in result["wrong"]:
                print(f"  wrong {w['id']} ({w['split']}, {w['class']}): {w['text'][:80]!r} expected {w['expected']} "
                      f"got {w['got']} by {w['decided_by']}")
    for split in splits:
        print(f"\nright on {split}: " + ", ".join(f"{name} {r['accuracy'][split]:.1%}" for name, r in modes.items())
              + (" (rules: the rest is left open, none wrong is the bar)" if "rules" in modes else ""))
    print(f"classifier: loaded in {load_ms:.1f} ms; trained on "
          f"{json.loads(WEIGHTS_PATH.read_text())['trained_on']['items']} tuning items")
    out = args.out or RESULTS_DIR / ("routing.json" if not args.set else f"routing-{args.set.stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "set": {"path": str(path), "items": len(items), **{s: sum(1 for i in items if i.split == s) for s in splits}},
        "classifier_load_ms": load_ms, "model_start_s": model_start_s,
        "machine": {"cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0]},
        "modes": modes}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
