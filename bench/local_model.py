"""Embedded model benchmark: server settings measured on this machine, for choosing the defaults.

    python bench/local_model.py [--runs 3] [--model qwen2.5-coder-1.5b|qwen2.5-coder-0.5b|PATH]
                                [--variants base,threads2,ctx4096,batch128,cache] [--compare-0.5b]

Each variant is the managed llama-cpp-python server (assistant/llm/local.py) with one setting changed
from the base (the shipped defaults). The machine is shared and noisy, so variants are run round-robin
(run 1 of every variant, then run 2, ...), each on a freshly started server, and medians are reported.
Per run:
  prompt tok/s     prompt processing: a ~250-token prompt no earlier request shares, 1 token generated
  gen tok/s        generation: a streamed reply of 32 tokens, (chunks - 1) / (last - first chunk)
  answer 1st tok   time to first token of a quick answer as the product asks it (excerpt prompt on a small
                   repository), on a server that has just answered the router (its prompt cache is cold
                   for the answer prompt)
  answer again     the same for a second question right after another router call: what a prompt cache
                   saves when requests alternate between the router's and the answerer's prompts
Prints a table and writes bench/results/local_model.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai  # noqa: E402

from assistant.config import load_settings  # noqa: E402
from assistant.conversation.repo_tools import ReadOnlyRepo  # noqa: E402
from assistant.access import RepoPolicy  # noqa: E402
from assistant.conversation.retrieval import retrieve  # noqa: E402
from assistant.llm.local import LocalModelConfig, LocalModelServer, bundled_weights  # noqa: E402
from assistant.prompts import load_prompt, render_prompt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "local_model.json"
VARIANTS = {
    "base": {},                          # the shipped defaults (1 thread on 2 cores, 8192 context, 512 batch, 512 MiB cache)
    "threads2": {"n_threads": 2},
    "nocache": {"prompt_cache_mb": 0},
    "ctx4096": {"n_ctx": 4096},
    "batch128": {"n_batch": 128},
}
QUESTIONS = ["What does the add function return?", "Where is mul defined and what does it do?",
             "Which test checks add?", "What does test_mul expect?"]
ROUTER_MESSAGES = ["Fix the failing test in test_calc.py", "why does add subtract?", "add a divide function",
                   "run the tests and tell me what fails"]


def bench_repo(root: Path) -> Path:
    from tests.fixtures.repos import make_calc_repo
    return make_calc_repo(root / "calc")


def answer_messages(repo: ReadOnlyRepo, question: str) -> list[dict]:
    """The messages of a quick answer with the embedded model, as assistant/conversation/service.py sends them."""
    retrieval = retrieve(repo, question)
    example_question, example_answer = load_prompt("answer_excerpts_example.md").split("\n=====\n")
    return [{"role": "system", "content": load_prompt("answer_excerpts_system.md").strip()},
            {"role": "user", "content": example_question.strip()},
            {"role": "assistant", "content": example_answer.strip()},
            {"role": "user", "content": render_prompt("answer_excerpts_task.md", followup="",
                                                      excerpts=retrieval.as_prompt(), question=question).strip()}]


def router_messages(text: str) -> list[dict]:
    """Another prompt the server sees between two answers (the router's opening, shortened to keep runs short
    on a loaded machine): a different prefix, so the answer's evaluated prompt is no longer the live one."""
    opening = " ".join(load_prompt("router.md").split()[:80])
    return [{"role": "system", "content": opening}, {"role": "user", "content": text}]


def first_token_s(client: openai.OpenAI, model: str, messages: list[dict], max_tokens: int = 8) -> float:
    started = time.perf_counter()
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                                            stream=True)
    first = float("nan")
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first != first:
            first = time.perf_counter() - started
    return first


def generation_rate(client: openai.OpenAI, model: str, run: int, tokens: int = 32) -> float:
    stamps = []
    stream = client.chat.completions.create(
        model=model, max_tokens=tokens, temperature=0, stream=True,
        messages=[{"role": "user", "content": f"Run {run}: write a Python function that parses an ISO date, with a docstring."}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 2 else float("nan")


def prompt_rate(client: openai.OpenAI, model: str, run: int) -> float:
    text = f"Run {run} at {time.time()}. " + " ".join(
        f"Line {i}: def f{i}(x): return x * {i} + {run}" for i in range(12))
    started = time.perf_counter()
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], max_tokens=1,
                                           temperature=0)
    return reply.usage.prompt_tokens / (time.perf_counter() - started)


def one_run(variant: str, model: str | None, data_dir: Path, repo: ReadOnlyRepo, run: int) -> dict:
    config = LocalModelConfig(model_path=model, data_dir=data_dir, **VARIANTS[variant])
    server = LocalModelServer(config)
    started = time.perf_counter()
    server.start(timeout_s=300)
    startup = time.perf_counter() - started
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=600)
        name = server.model_name
        q1, q2 = QUESTIONS[run % len(QUESTIONS)], QUESTIONS[(run + 1) % len(QUESTIONS)]
        first_token_s(client, name, router_messages(ROUTER_MESSAGES[run % 4]), 4)
        answer_first = first_token_s(client, name, answer_messages(repo, q1))
        router_first = first_token_s(client, name, router_messages(ROUTER_MESSAGES[(run + 1) % 4]), 4)
        answer_again = first_token_s(client, name, answer_messages(repo, q2))
        return {"startup_s": startup, "prompt_tokens_per_s": prompt_rate(client, name, run),
                "generation_tokens_per_s": generation_rate(client, name, run),
                "answer_first_token_s": answer_first, "router_first_token_s": router_first,
                "answer_again_first_token_s": answer_again, "load_1m": os.getloadavg()[0]}
    finally:
        server.stop()


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default=None, help="a bundled model's name or a GGUF path (default: the default model)")
    parser.add_argument("--variants", default="base,threads2,nocache",
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--compare-0.5b", dest="compare_small", action="store_true",
                        help="also run the base variant on qwen2.5-coder-0.5b")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where bundled weights are assembled (default: the assistant's data dir)")
    args = parser.parse_args()
    data_dir = args.data_dir or load_settings().data_dir
    variants = [(v, args.model) for v in args.variants.split(",")]
    if args.compare_small:
        variants.append(("base", "qwen2.5-coder-0.5b"))
    samples: dict[tuple[str, str | None], list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        repo = ReadOnlyRepo(bench_repo(Path(tmp)), RepoPolicy.from_settings(load_settings()))
        for run in range(args.runs):
            for variant, model in variants:   # round-robin: noise from other work spreads over all variants
                sample = one_run(variant, model, data_dir, repo, run)
                samples[(variant, model)].append(sample)
                print(f"run {run + 1} {variant:<9} {model or 'default'}: " + json.dumps(
                    {k: round(v, 2) for k, v in sample.items()}), flush=True)
    rows = []
    for (variant, model), runs in samples.items():
        weights = bundled_weights(model)
        rows.append({"variant": variant, "settings": VARIANTS[variant],
                     "model": weights.name if weights else str(model), "runs": len(runs),
                     **{key: median([r[key] for r in runs]) for key in runs[0]}})
    header = (f"{'model':<20} {'variant':<9} {'prompt tok/s':>12} {'gen tok/s':>9} {'answer 1st tok s':>16} "
              f"{'answer again s':>14} {'router 1st s':>12} {'start s':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<20} {r['variant']:<9} {r['prompt_tokens_per_s']:>12.1f} {r['generation_tokens_per_s']:>9.1f} "
              f"{r['answer_first_token_s']:>16.2f} {r['answer_again_first_token_s']:>14.2f} "
              f"{r['router_first_token_s']:>12.2f} {r['startup_s']:>7.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "note": "shared machine: other work ran beside this; medians of interleaved runs"},
        "runs_per_variant": args.runs,
        "results": rows,
        "samples": {f"{v}/{m or 'default'}": s for (v, m), s in samples.items()},
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
