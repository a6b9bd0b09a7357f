"""Local model benchmark: the bundled Gemma 3 270M served by our managed llama-cpp-python server.

    python bench/local_model.py [--runs 3] [--threads 1,2] [--gen-tokens 128]

Measures, per thread count:
  start-up       spawn -> /v1/models answers (model already assembled)
  first token    a short chat request, streamed: time to the first content chunk
  decode         generation speed in tokens/s over a streamed reply of up to --gen-tokens tokens
  prompt         prompt-processing speed in tokens/s for a ~1,300-token prompt
  constrained    wall time of one grammar-constrained next_action() (a tool call or an answer)
Prints a table and writes bench/results/local_model.json (medians).
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

from assistant.llm.constrained import next_action  # noqa: E402
from assistant.llm.local import LocalModelConfig, LocalModelServer, bundled_model_path  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "local_model.json"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "shell",
            "description": "Run a shell command in the repository.",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
        },
    }
]


def measure_assembly() -> dict:
    started = time.perf_counter()
    path = bundled_model_path()
    return {"model_path": str(path), "model_bytes": path.stat().st_size, "cached_lookup_s": time.perf_counter() - started}


def measure_startup(data_dir: Path, threads: int) -> tuple[LocalModelServer, float]:
    server = LocalModelServer(LocalModelConfig(model_path=None, data_dir=data_dir, n_threads=threads))
    started = time.perf_counter()
    server.start()
    return server, time.perf_counter() - started


def streamed_reply(client: openai.OpenAI, model: str, messages: list[dict], max_tokens: int) -> dict:
    started = time.perf_counter()
    stamps: list[float] = []
    usage = None
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
    tokens = usage.completion_tokens if usage else len(stamps)
    decode_s = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
    return {
        "first_token_s": stamps[0] - started if stamps else float("nan"),
        "completion_tokens": tokens,
        # the first chunk marks the end of prompt processing; the rest is decoding
        "decode_tokens_per_s": (len(stamps) - 1) / decode_s if len(stamps) > 1 else float("nan"),
    }


def bench_threads(threads: int, runs: int, gen_tokens: int) -> dict:
    startups, first_tokens, decode_rates, prompt_rates, constrained_s = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            server, startup_s = measure_startup(Path(tmp), threads)
            startups.append(startup_s)
            try:
                client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=300)
                # A different question per run keeps llama.cpp's prompt cache from flattering the numbers.
                short = streamed_reply(client, server.model_name, [{"role": "user", "content": f"Run {run}: tell me a story about a lighthouse."}], gen_tokens)
                first_tokens.append(short["first_token_s"])
                decode_rates.append(short["decode_tokens_per_s"])
                long_prompt = f"Run {run}. " + " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(80))
                started = time.perf_counter()
                # One generated token: the wall time is almost all prompt processing.
                long = client.chat.completions.create(
                    model=server.model_name, messages=[{"role": "user", "content": long_prompt}], max_tokens=1, temperature=0
                )
                prompt_rates.append(long.usage.prompt_tokens / (time.perf_counter() - started))
                started = time.perf_counter()
                next_action(
                    client, server.model_name,
                    [{"role": "user", "content": f"Run {run}: list the files in the repository."}],
                    TOOLS, temperature=0, max_tokens=200,
                )
                constrained_s.append(time.perf_counter() - started)
            finally:
                server.stop()
    return {
        "threads": threads,
        "runs": runs,
        "startup_s": statistics.median(startups),
        "first_token_s": statistics.median(first_tokens),
        "decode_tokens_per_s": statistics.median(decode_rates),
        "prompt_tokens_per_s": statistics.median(prompt_rates),
        "constrained_action_s": statistics.median(constrained_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", default=",".join(sorted({"1", str(os.cpu_count() or 1)}, key=int)))
    parser.add_argument("--gen-tokens", type=int, default=128)
    args = parser.parse_args()

    assembly = measure_assembly()
    rows = [bench_threads(int(t), args.runs, args.gen_tokens) for t in args.threads.split(",")]

    header = f"{'threads':>7} {'start-up s':>10} {'1st token s':>11} {'decode tok/s':>12} {'prompt tok/s':>12} {'action s':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['threads']:>7} {row['startup_s']:>10.2f} {row['first_token_s']:>11.2f} "
            f"{row['decode_tokens_per_s']:>12.1f} {row['prompt_tokens_per_s']:>12.0f} {row['constrained_action_s']:>8.2f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "load_average_1m": os.getloadavg()[0],  # other work on the machine skews every figure
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "model": assembly,
                "gen_tokens": args.gen_tokens,
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
