"""Scale-out benchmark: the durable queue, workers and engines on this machine.

    python bench/scale.py [--sleep 10] [--rounds 3] [--claims 40] [--steps 40] [--latency-jobs 3]

Measures, in one run (each part on a database of its own on a private PostgreSQL server):
  throughput    jobs per minute with 1 worker on 1 engine vs 2 workers on 2 engines, each worker running 2
                jobs at once and each engine taking 2, with sleep-dominated jobs (the agent sleeps --sleep s):
                the peer is the single worker; target: 2+2 at least 1.7 times 1+1
  claim         time from submit to a worker's claim (queued_at -> preparing_at), with idle workers
  event latency a job submitted through web process 1 runs on a worker; a browser session on web process 2
                stamps each agent step when its card shows it; latency = that moment - the event's time at the
                worker. Target: p99 under 200 ms
Prints a table and writes bench/results/scale.json. Needs root, Docker, PostgreSQL and Chromium (./test.sh
installs them); starts the extra engine `scale-a` with scripts/ensure-docker.sh.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.config import load_settings  # noqa: E402
from assistant.core import Assistant  # noqa: E402
from assistant.jobs.manager import JobRequest  # noqa: E402
from assistant.store import Store  # noqa: E402
from assistant.testing.postgres import PrivatePostgres  # noqa: E402
from assistant.testing.scripted_model import Reply, ScriptedModelServer, by_turn  # noqa: E402
from tests.fixtures.repos import make_calc_repo  # noqa: E402
from tests.jobs.queue_harness import AGENT, Workers, fresh_database, queue_env, wait_for  # noqa: E402
from tests.sandbox.engines import DEFAULT_URL, ensure_engine, socket_url  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")
OBSERVER_JS = """() => {
  window.__seen = {};
  const scan = () => {
    const now = Date.now();
    for (const step of document.querySelectorAll('.step')) {
      const h = step.querySelector("h3"); const m = h && h.textContent.match(/Job (\\d+) ·/);
      if (!m) continue;
      for (const s of step.textContent.matchAll(/[\u2714\u2716] step (\\d+):/g)) {
        const key = m[1] + ':' + s[1];
        if (!(key in window.__seen)) window.__seen[key] = now;
      }
    }
  };
  new MutationObserver(scan).observe(document.body, {subtree: true, childList: true, characterData: true});
  scan();
}"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def settings_env(url, model, data, **extra):
    return queue_env(url, model.base_url, data, ASSISTANT_LOG_LEVEL="WARNING", **extra)


def throughput(server, model, root: Path, workers: int, engines: list[str], jobs: int, capacity: int = 2) -> dict:
    url = fresh_database(server, f"bench_tp_{workers}_{len(engines)}")
    hosts = ",".join(f"{n}={DEFAULT_URL if n == 'default' else socket_url(n)}*{capacity}" for n in engines)
    env = settings_env(url, model, root / f"data-{workers}", ASSISTANT_DOCKER_HOSTS=hosts)
    web = Assistant(load_settings(env))
    web.start(sweep=False)
    pool = Workers(env, root)
    repo = make_calc_repo(root / f"calc-{workers}")
    try:
        for index in range(workers):
            pool.start(f"tp{workers}-{index}", concurrency=capacity)
        started = time.monotonic()
        submitted = [j for _ in range(jobs) for j in web.jobs.submit(JobRequest(task="rest-bench", repo=str(repo), setup=[]))]
        done = [web.jobs.wait(j.id, timeout=900) for j in submitted]
        elapsed = time.monotonic() - started
        assert all(j.state == "succeeded" for j in done), [j.reason for j in done]
        return {"workers": workers, "engines": len(engines), "jobs": jobs, "seconds": round(elapsed, 1),
                "jobs_per_minute": round(jobs / elapsed * 60, 2),
                "by_engine": {e: sum(j.engine == e for j in done) for e in engines}}
    finally:
        pool.stop_all()
        web.close()


def claims(server, model, root: Path, count: int) -> dict:
    url = fresh_database(server, "bench_claim")
    env = settings_env(url, model, root / "data-claim")
    web = Assistant(load_settings(env))
    web.start(sweep=False)
    pool = Workers(env, root)
    repo = make_calc_repo(root / "calc-claim")
    try:
        pool.start("claim-a", concurrency=4)
        pool.start("claim-b", concurrency=4)
        samples = []
        for _ in range(count):
            job = web.jobs.submit(JobRequest(task="answer-bench", repo=str(repo), setup=[]))[0]
            row = wait_for(lambda: (lambda j: j if j.preparing_at else None)(web.store.get_job(job.id)), 60, "a claim")
            samples.append((row.preparing_at - row.queued_at).total_seconds() * 1000)
            time.sleep(0.2)
        return {"samples": len(samples), "median_ms": round(statistics.median(samples), 1),
                "p99_ms": round(pct(samples, 99), 1), "max_ms": round(max(samples), 1)}
    finally:
        pool.stop_all()
        web.close()


def event_latency(server, model, root: Path, steps: int, jobs: int) -> dict:
    from playwright.sync_api import sync_playwright
    from tests.web.harness import CHROMIUM, CHROMIUM_ARGS, USERS, AppProcess, login, make_repo, send

    url = fresh_database(server, "bench_latency")
    repo = make_repo(root / "repo-latency")
    data = root / "data-latency"
    env = settings_env(url, model, data, ASSISTANT_DEFAULT_REPO=str(repo), ASSISTANT_SERVE_WORKERS="false",
                      ASSISTANT_USERS=",".join(f"{u}:{p}" for u, p in USERS.items()), ASSISTANT_REPO_ROOTS=str(root))
    store = Store(url)
    pool = Workers(env, root)
    webs = [AppProcess(data, model.base_url, repo, root / f"latency-web{i}.log",
                       **{k: v for k, v in env.items() if k.startswith(("ASSISTANT_", "OPENAI_"))}) for i in (1, 2)]
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        pool.start("latency", concurrency=jobs)
        for web in webs:
            web.start()
        pages = []
        for web in webs:
            page = browser.new_context().new_page()
            login(page, web.url, "alice")
            pages.append(page)
        send(pages[0], "/code Warm up")  # makes the thread; its job is not measured
        thread_id = wait_for(lambda: (store.list_threads(store.get_user("alice").id) or [None])[0], 30, "the thread").id
        wait_for(lambda: all(j.state in TERMINAL for j in store.list_jobs(thread_id=thread_id)), 120, "the warm-up")
        pages[1].goto(f"{webs[1].url}/thread/{thread_id}")
        pages[1].wait_for_selector("h3:has-text('Job 1 ·')", timeout=30_000)
        pages[1].evaluate(OBSERVER_JS)
        for index in range(jobs):
            send(pages[0], f"/code Take small steps ({chr(ord('a') + index)})")
        wait_for(lambda: len(store.list_jobs(thread_id=thread_id)) == jobs + 1, 60, "the measured jobs")
        wait_for(lambda: all(j.state in TERMINAL for j in store.list_jobs(thread_id=thread_id)), 600, "the jobs")
        pages[1].wait_for_timeout(1500)
        seen = pages[1].evaluate("() => window.__seen")
        samples = []
        for job in store.list_jobs(thread_id=thread_id)[1:]:
            for row in store.list_events(job.id):
                if row.kind != "step":
                    continue
                shown = seen.get(f"{job.number}:{row.data.get('step')}")
                if shown is not None:
                    at = row.created_at.replace(tzinfo=row.created_at.tzinfo or timezone.utc).timestamp() * 1000
                    samples.append(shown - at)
        expected = jobs * steps
        return {"samples": len(samples), "expected": expected, "median_ms": round(statistics.median(samples), 1),
                "p90_ms": round(pct(samples, 90), 1), "p99_ms": round(pct(samples, 99), 1),
                "max_ms": round(max(samples), 1), "by_step_ms": [round(v, 1) for v in samples]}
    finally:
        for closer in (browser.close, pw.stop, *(w.stop for w in webs), pool.stop_all, store.close):
            try:
                closer()
            except Exception:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sleep", type=float, default=10.0, help="seconds each throughput job's agent sleeps")
    parser.add_argument("--rounds", type=int, default=3, help="throughput jobs per free slot")
    parser.add_argument("--claims", type=int, default=40, help="submit-to-claim samples")
    parser.add_argument("--steps", type=int, default=40, help="agent steps per latency job")
    parser.add_argument("--latency-jobs", type=int, default=3)
    parser.add_argument("--step-pause", type=float, default=0.5,
                        help="seconds each latency step's command takes (a model answers in about that)")
    parser.add_argument("--only", choices=["throughput", "claim", "latency"], help="run one part")
    args = parser.parse_args()
    ensure_engine("scale-a")
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    model = ScriptedModelServer().start()
    results: dict = {}
    with PrivatePostgres() as server:
        model.script([by_turn(Reply.call("shell", command=f"sleep {args.sleep}"), Reply.text("Rested."))],
                     match=lambda r: AGENT in r["messages"][0]["content"] and "rest-bench" in r["messages"][1]["content"],
                     repeat_last=True)
        model.script([Reply.text("Nothing to do.")],
                     match=lambda r: AGENT in r["messages"][0]["content"] and "answer-bench" in r["messages"][1]["content"],
                     repeat_last=True)
        step_script = by_turn(*[Reply.call("shell", command=f"sleep {args.step_pause}; echo step {n}")
                                for n in range(1, args.steps + 1)], Reply.text("Took all the steps."))
        model.script([step_script], match=lambda r: AGENT in r["messages"][0]["content"], repeat_last=True)
        if args.only in (None, "throughput"):
            one = throughput(server, model, root, 1, ["default"], 2 * args.rounds)
            two = throughput(server, model, root, 2, ["default", "scale-a"], 4 * args.rounds)
            results["throughput"] = {"one": one, "two": two,
                                     "ratio": round(two["jobs_per_minute"] / one["jobs_per_minute"], 2)}
        if args.only in (None, "claim"):
            results["claim"] = claims(server, model, root, args.claims)
        if args.only in (None, "latency"):
            results["event_latency"] = event_latency(server, model, root, args.steps, args.latency_jobs)
    model.stop()
    targets, rows = {}, []
    if "throughput" in results:
        tp = results["throughput"]
        targets["throughput_ratio_at_least_1.7"] = tp["ratio"] >= 1.7
        rows += [("jobs/min, 1 worker + 1 engine", tp["one"]["jobs_per_minute"]),
                 ("jobs/min, 2 workers + 2 engines", tp["two"]["jobs_per_minute"]), ("ratio (target >= 1.7)", tp["ratio"])]
    if "claim" in results:
        rows += [("submit -> claim, median ms", results["claim"]["median_ms"]),
                 ("submit -> claim, p99 ms", results["claim"]["p99_ms"])]
    if "event_latency" in results:
        lat = results["event_latency"]
        targets["event_latency_p99_under_200ms"] = lat["p99_ms"] < 200
        rows += [("worker -> browser on web 2, median ms", lat["median_ms"]),
                 ("worker -> browser on web 2, p99 ms (< 200)", lat["p99_ms"]),
                 ("latency samples (of expected)", f"{lat['samples']}/{lat['expected']}")]
    print(f"{'measure':<46}{'value':>14}")
    for name, value in rows:
        print(f"{name:<46}{value:>14}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"results": results, "targets_met": targets, "args": vars(args)}, indent=2))
    shutil.rmtree(root, ignore_errors=True)  # kept when a part fails: its worker and web logs are there
    print(f"targets met: {targets}\nwritten to {RESULTS}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
