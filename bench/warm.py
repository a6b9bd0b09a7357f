"""Warm-pool benchmark: delegate → the agent's first command, with the warm pool, without it, and the peer way.

    python bench/warm.py [--runs 7] [--pause 2.0] [--no-web]

The model is the scripted server answering at once; the agent's first step is a shell command that prints
the wall-clock time inside the sandbox. Measured, in one run, on the same small repository (no setup):

  web       a job delegated through the real web app (socket client, `/code` command, as bench/load.py does),
            with ASSISTANT_WARM_POOL on (the chat start and each finished job ready a sandbox; the user pauses
            --pause seconds before each delegation, as one types) and off
  core      JobManager.submit() → first command, the pool on (readied beforehand) and off, in process
  peer      `docker run --rm --network none <image> <the same command>` (what a plain CLI driver pays)

Prints a table (medians, ratios) and writes bench/results/warm.json. Target: warm web < 300 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from assistant.config import load_settings  # noqa: E402
from assistant.core import Assistant  # noqa: E402
from assistant.jobs.manager import JobRequest  # noqa: E402
from assistant.sandbox import DEFAULT_IMAGE, image_status  # noqa: E402
from assistant.store import Store  # noqa: E402
from assistant.testing.chat_client import ChatSession  # noqa: E402
from assistant.testing.scripted_model import Reply, ScriptedModelServer, by_turn  # noqa: E402
from bench.load import (AGENT, ANSWERER, FIRST_COMMAND, PASSWORD, ROUTER, USER, App, base_env,  # noqa: E402
                        docker_cli_first_command_ms, first_command_at, make_repo, wait_jobs)

RESULTS = REPO_ROOT / "bench" / "results" / "warm.json"
TARGET_MS = 300.0


def script(model: ScriptedModelServer) -> None:
    model.reset()
    decision = json.dumps({"route": "answer", "followup": False, "job": None, "reason": "a question"})
    model.when_system_contains(ROUTER, [Reply.text(decision)], repeat_last=True)
    model.when_system_contains(ANSWERER, [Reply.text("An answer.")], repeat_last=True)
    model.when_system_contains(AGENT, [by_turn(Reply.call("shell", command=FIRST_COMMAND),
                                               Reply.text("Printed the time."))], repeat_last=True)


def wait_ready(assistant: Assistant, timeout: float = 60) -> None:
    deadline, settled = time.monotonic() + timeout, {"ready": 1, "starting": 0, "resolving": 0}
    while assistant.jobs.warm.counts() != settled and time.monotonic() < deadline:
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------- web
async def web_runs(model: ScriptedModelServer, repo: Path, scratch: Path, warm: bool, runs: int,
                   pause: float) -> dict:
    data_dir = scratch / f"web-{'warm' if warm else 'cold'}"
    data_dir.mkdir()
    os.chmod(data_dir, 0o711)
    env = base_env(model, data_dir)
    env.update(ASSISTANT_USERS=f"{USER}:{PASSWORD}", ASSISTANT_DEFAULT_REPO=str(repo), ASSISTANT_SANDBOX_BACKEND="docker",
               ASSISTANT_SETUP_CACHE="false", ASSISTANT_WARM_POOL=str(warm).lower())
    app = App(REPO_ROOT / "assistant" / "app.py", env, scratch / f"app-{'warm' if warm else 'cold'}.log").start()
    store = Store(f"sqlite:///{data_dir / 'assistant.db'}")
    times = []
    try:
        chat = await ChatSession(app.url, USER, PASSWORD).open()
        try:
            for index in range(runs + 1):  # the first of each mode warms up the app and is not counted
                await asyncio.sleep(pause)  # the user types (and reads the previous result)
                tag = f"[{'warm' if warm else 'cold'} {index}]"
                sent = time.time()
                await chat.send(f"print the time {tag}", command="code")
                await wait_jobs(store, tag, 1)
                printed = first_command_at(model, tag)
                if printed is None:
                    raise RuntimeError(f"job {tag} printed no time; see {scratch}")
                if index:
                    times.append((printed - sent) * 1000)
        finally:
            await chat.close()
    finally:
        store.close()
        app.stop()
    return {"first_command_ms": times}


# ---------------------------------------------------------------------------------------------- core
def core_runs(model: ScriptedModelServer, repo: Path, scratch: Path, warm: bool, runs: int) -> dict:
    data_dir = scratch / f"core-{'warm' if warm else 'cold'}"
    data_dir.mkdir()
    os.chmod(data_dir, 0o711)
    settings = load_settings({
        "OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": "bench", "ASSISTANT_MODEL": "scripted-model",
        "ASSISTANT_DATA_DIR": str(data_dir), "ASSISTANT_CONFIG": str(data_dir / "none.toml"),
        "ASSISTANT_SANDBOX_BACKEND": "docker", "ASSISTANT_SETUP_CACHE": "false",
        "ASSISTANT_WARM_POOL": str(warm).lower()})
    assistant = Assistant(settings)
    assistant.start(sweep=False)
    times = []
    try:
        for index in range(runs + 1):
            if warm:
                assistant.jobs.prewarm(str(repo))
                wait_ready(assistant)
            tag = f"[core {'warm' if warm else 'cold'} {index}]"
            sent = time.time()
            job = assistant.jobs.submit(JobRequest(task=f"print the time {tag}", repo=str(repo)))[0]
            assistant.jobs.wait(job.id, timeout=120)
            printed = first_command_at(model, tag)
            if printed is None:
                raise RuntimeError(f"job {tag} printed no time: {assistant.store.get_job(job.id).reason}")
            if index:
                times.append((printed - sent) * 1000)
        stats = vars(assistant.jobs.warm.stats) if warm else {}
    finally:
        assistant.close()
    return {"first_command_ms": times, "pool": stats}


# ---------------------------------------------------------------------------------------------- report
def row(label: str, value: float, cold: float, docker: float) -> str:
    return f"{label:<46} {value:>9.0f} {value / cold:>9.2f} {value / docker:>10.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds the user 'types' before each delegation")
    parser.add_argument("--no-web", action="store_true", help="skip the web-app figures")
    args = parser.parse_args()
    if not image_status(DEFAULT_IMAGE)[0]:
        print(f"the sandbox image {DEFAULT_IMAGE} is missing: run `assistant sandbox build`", file=sys.stderr)
        return 2
    model = ScriptedModelServer().start()
    script(model)
    raw: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as scratch_name:
        scratch = Path(scratch_name)
        os.chmod(scratch, 0o711)
        repo = make_repo(scratch / "repo")
        try:
            raw["core_cold"] = core_runs(model, repo, scratch, warm=False, runs=args.runs)
            raw["core_warm"] = core_runs(model, repo, scratch, warm=True, runs=args.runs)
            if not args.no_web:
                raw["web_cold"] = asyncio.run(web_runs(model, repo, scratch, False, args.runs, args.pause))
                raw["web_warm"] = asyncio.run(web_runs(model, repo, scratch, True, args.runs, args.pause))
        finally:
            model.stop()
    raw["docker_run_ms"] = docker_cli_first_command_ms(args.runs)
    docker = raw["docker_run_ms"]
    medians = {name: statistics.median(raw[name]["first_command_ms"]) for name in raw if name != "docker_run_ms"}

    print(f"\ndelegate → the agent's first command (median of {args.runs}; ratios: ours / peer)\n")
    print(f"{'':<46} {'ms':>9} {'/ cold':>9} {'/ docker':>10}")
    for where in ("web", "core"):
        if f"{where}_cold" not in medians:
            continue
        cold = medians[f"{where}_cold"]
        print(row(f"{where}: warm pool", medians[f"{where}_warm"], cold, docker))
        print(row(f"{where}: no pool (cold)", cold, cold, docker))
    print(f"{'docker run --rm --network none (peer)':<46} {docker:>9.0f} {'':>9} {1.0:>10.2f}")
    judged = medians.get("web_warm", medians["core_warm"])
    met = judged < TARGET_MS
    print(f"\ntarget: warm {'web' if 'web_warm' in medians else 'core'} < {TARGET_MS:.0f} ms: "
          f"{judged:.0f} ms — {'met' if met else 'MISSED'}")
    print(f"pool (core, warm): {raw['core_warm']['pool']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"medians_ms": medians, "docker_run_ms": docker, "target_ms": TARGET_MS,
                                   "target_met": met, "raw": raw, "runs": args.runs, "pause_s": args.pause},
                                  indent=2))
    print(f"wrote {RESULTS.relative_to(REPO_ROOT)}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
