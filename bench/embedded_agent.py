"""The product against mini-swe-agent on the same small model, on tiny repositories with hidden tests.

    python bench/embedded_agent.py [--set tune|held-out|all] [--agents product,product-sr,msa] [--model GGUF]
                                   [--threads 2] [--ctx 8192] [--job-seconds 300] [--only NAME,...]

One llama-cpp-python server on loopback serves the GGUF (the embedded Qwen2.5-Coder 1.5B by default) to both
agents, through a counting relay that reads each reply's token usage, so both are served and measured the
same way:

- product: `assistant run --json` on a fresh repository (the guided harness, grammar-constrained actions,
  local sandbox), its patch taken from the JSON, self-review off; product-sr: the same with self-review on
  (ASSISTANT_SELF_REVIEW=on: the job's own diff reviewed in its sandbox before it ends). For both, the kind of
  result the product reported (fix, draft, …) is recorded next to what the hidden tests say;
- mini-swe-agent (pinned, its text-based config, its local environment in a temporary copy of the
  repository), its changes taken with `git diff` in that copy. It lives in its own virtualenv,
  bench/.venv-msa, made on first use with: python3 -m venv bench/.venv-msa &&
  bench/.venv-msa/bin/pip install mini-swe-agent==2.4.6

A task is solved when, on a fresh copy of the repository with the agent's patch applied, its visible tests
and its HIDDEN acceptance tests (bench/embedded_tasks.py; never shown to an agent) pass. Prints solved/total,
wall time per task and tokens per solved task for each agent and set, with the machine's load; writes
bench/results/embedded_agent.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from embedded_tasks import SETS, Task  # noqa: E402

RESULTS = BENCH / "results" / "embedded_agent.json"
MSA_VENV = BENCH / ".venv-msa"
MSA_VERSION = "2.4.6"
DEFAULT_MODEL = Path(os.environ.get("ASSISTANT_BENCH_GGUF", "")) if os.environ.get("ASSISTANT_BENCH_GGUF") else None
MODEL_ALIAS = "bench-model"


# ---------------------------------------------------------------------------------------------- serving
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(model: Path, threads: int, ctx: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", str(ctx), "--n_threads", str(threads), "--model_alias", MODEL_ALIAS]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the model server exited ({process.returncode}); see {log}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the model server did not answer within 300 s; see {log}")


class CountingRelay:
    """A loopback relay in front of the model server that adds up the token usage of every reply."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.prompt_tokens = self.completion_tokens = self.requests = 0
        self._lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def _forward(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path = self.path[3:] if self.path.startswith("/v1") else self.path
                request = urllib.request.Request(relay.upstream + path, data=body, method=method,
                                                 headers={"Content-Type": self.headers.get("Content-Type",
                                                                                           "application/json")})
                try:
                    with urllib.request.urlopen(request, timeout=1800) as response:
                        status, data, ctype = response.status, response.read(), response.headers.get("Content-Type", "")
                except urllib.error.HTTPError as exc:
                    status, data, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
                relay.count(data)
                if relay.transcript is not None and body:
                    relay.record(body, data)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype or "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the agent was stopped at its budget while the server still answered it

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    transcript: Path | None = None

    def record(self, body: bytes, data: bytes) -> None:
        """The last message of each request and the reply, one JSON line each (what the model saw and said)."""
        try:
            request = json.loads(body)
            reply = json.loads(data)["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError):
            reply = data[:500].decode("utf-8", "replace")
            request = {} if not body.startswith(b"{") else json.loads(body)
        last = (request.get("messages") or [{}])[-1].get("content")
        with self._lock, self.transcript.open("a") as out:
            out.write(json.dumps({"last_message": str(last)[-1500:], "reply": reply}) + "\n")

    def count(self, data: bytes) -> None:
        usages = []
        text = data.decode("utf-8", "replace")
        candidates = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")] or [text]
        for item in candidates:
            try:
                value = json.loads(item)
            except ValueError:
                continue
            if isinstance(value, dict) and isinstance(value.get("usage"), dict):
                usages.append(value["usage"])
        with self._lock:
            self.requests += 1
            for usage in usages[-1:]:
                self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                self.completion_tokens += int(usage.get("completion_tokens") or 0)

    def take(self) -> dict:
        with self._lock:
            taken = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                     "requests": self.requests}
            self.prompt_tokens = self.completion_tokens = self.requests = 0
        return taken

    def close(self) -> None:
        self.server.shutdown()


# ---------------------------------------------------------------------------------------------- repositories
def git(cwd: Path, *args: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", *args], cwd=cwd,
                          check=check, capture_output=True, text=True, input=input_text)


def make_repo(root: Path, task: Task) -> Path:
    root.mkdir(parents=True)
    for rel, text in task.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "initial")
    os.chmod(root, 0o755)
    return root


def accepted(task: Task, patch: str, work: Path) -> tuple[bool, str]:
    """Apply the patch to a fresh copy, add the hidden tests, run the visible and the hidden ones."""
    repo = make_repo(work, task)
    if patch.strip():
        applied = git(repo, "apply", "--whitespace=nowarn", "-", check=False, input_text=patch)
        if applied.returncode != 0:
            return False, "patch does not apply: " + applied.stderr.strip()[:300]
    for rel, text in task.hidden.items():
        (repo / rel).write_text(text)
    run = subprocess.run(["bash", "-c", task.hidden_command], cwd=repo, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    tail = (run.stdout + run.stderr).strip().splitlines()[-1:] or [""]
    return run.returncode == 0, tail[0][:200]


# ---------------------------------------------------------------------------------------------- agents
def run_product(task: Task, repo: Path, base_url: str, work: Path, job_seconds: int, self_review: str = "off") -> dict:
    data = work / "data"
    data.mkdir(parents=True)
    os.chmod(work, 0o711)
    os.chmod(data, 0o711)
    env = {**os.environ, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "bench", "ASSISTANT_MODEL": MODEL_ALIAS,
           "ASSISTANT_TOOL_PROTOCOL": "grammar", "ASSISTANT_AGENT_HARNESS": "auto", "ASSISTANT_DATA_DIR": str(data),
           "ASSISTANT_SANDBOX_BACKEND": os.environ.get("ASSISTANT_SANDBOX_BACKEND", "local"),
           "ASSISTANT_JOB_MAX_SECONDS": str(job_seconds), "ASSISTANT_MODEL_TIMEOUT_S": "600",
           "ASSISTANT_CONTEXT_WINDOW": "8192", "ASSISTANT_WARM_POOL": "false",
           "ASSISTANT_CONFIG": str(work / "none.toml"), "NO_PROXY": "127.0.0.1,localhost",
           "ASSISTANT_SELF_REVIEW": self_review}
    started = time.monotonic()
    try:
        run = subprocess.run([sys.executable, "-m", "assistant.cli", "run", "--repo", str(repo), "--json", task.task],
                             capture_output=True, text=True, env=env, timeout=job_seconds + 900)
    except subprocess.TimeoutExpired:
        return {"wall_s": time.monotonic() - started, "patch": "", "status": "timed out",
                "note": f"`assistant run` did not end within {job_seconds + 900} s"}
    wall = time.monotonic() - started
    try:
        result = json.loads(run.stdout[run.stdout.index("{"):])
    except ValueError:
        return {"wall_s": wall, "patch": "", "status": f"no JSON (exit {run.returncode})",
                "note": (run.stderr or run.stdout).strip()[-400:]}
    outcome = result.get("outcome") or {}
    review = result.get("self_review") or {}
    verdict = (review.get("result") or {}).get("verdict")
    findings = (review.get("result") or {}).get("findings") or []
    return {"wall_s": wall, "patch": result.get("patch") or "", "status": result.get("status"),
            "note": (result.get("reason") or "")[:300], "steps": result.get("steps"),
            "kind": outcome.get("kind"), "kind_reason": (outcome.get("kind_reason") or "")[:300],
            "self_review": ({"status": review.get("status"), "verdict": verdict, "findings": len(findings),
                             "verified": sum(1 for f in findings if f.get("verified")),
                             "reason": review.get("reason") or "", "seconds": review.get("seconds")}
                            if review else None)}


def run_product_self_review(task: Task, repo: Path, base_url: str, work: Path, job_seconds: int) -> dict:
    return run_product(task, repo, base_url, work, job_seconds, self_review="on")


MSA_STEP_LIMIT = 30


def ensure_msa() -> Path:
    mini = MSA_VENV / "bin" / "mini"
    if not mini.exists():
        subprocess.run([sys.executable, "-m", "venv", str(MSA_VENV)], check=True)
        subprocess.run([str(MSA_VENV / "bin" / "pip"), "install", "-q", f"mini-swe-agent=={MSA_VERSION}"], check=True)
    return mini


def run_msa(task: Task, repo: Path, base_url: str, work: Path, job_seconds: int) -> dict:
    mini = ensure_msa()
    copy = work / "repo"
    shutil.copytree(repo, copy)
    trajectory = work / "trajectory.json"
    env = {**os.environ, "MSWEA_CONFIGURED": "true", "MSWEA_COST_TRACKING": "ignore_errors",
           "OPENAI_API_KEY": "bench", "MSWEA_SILENT_STARTUP": "1", "NO_PROXY": "127.0.0.1,localhost",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    # Its own text-based config, unchanged but for where the model is and how long it may go on.
    command = [str(mini), "-c", "mini_textbased.yaml", "-c", "model.model_class=litellm_textbased",
               "-c", f"model.model_kwargs.api_base={base_url}", "-c", "model.model_kwargs.api_key=bench",
               "-c", "model.cost_tracking=ignore_errors", "-c", f"agent.step_limit={MSA_STEP_LIMIT}",
               "-c", f"environment.cwd={copy}", "-m", f"openai/{MODEL_ALIAS}", "-t", task.task, "-y",
               "-o", str(trajectory), "--exit-immediately"]
    started = time.monotonic()
    try:
        run = subprocess.run(command, cwd=copy, capture_output=True, text=True, env=env, timeout=job_seconds,
                             stdin=subprocess.DEVNULL)
        status, note = f"exit {run.returncode}", (run.stderr or run.stdout).strip()[-300:]
    except subprocess.TimeoutExpired:
        status, note = "timed out", f"stopped after {job_seconds} s"
    wall = time.monotonic() - started
    git(copy, "add", "-A")
    patch = git(copy, "diff", "--cached", "--binary", "HEAD").stdout
    steps = None
    if trajectory.exists():
        try:
            steps = sum(1 for m in json.loads(trajectory.read_text()).get("messages", []) if m.get("role") == "assistant")
            exit_status = json.loads(trajectory.read_text()).get("info", {}).get("exit_status")
            status = f"{status} ({exit_status})" if exit_status else status
        except ValueError:
            pass
    return {"wall_s": wall, "patch": patch, "status": status, "note": note, "steps": steps}


AGENTS = {"product": run_product, "product-sr": run_product_self_review, "msa": run_msa}


# ---------------------------------------------------------------------------------------------- the run
def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=["tune", "held-out", "all"], default="all")
    parser.add_argument("--agents", default="product,msa",
                        help=f"comma-separated, of {', '.join(AGENTS)} (product-sr: the product with self-review on)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, required=DEFAULT_MODEL is None,
                        help="the GGUF to serve (or set ASSISTANT_BENCH_GGUF)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--job-seconds", type=int, default=300, help="budget per job (the target is 5 minutes)")
    parser.add_argument("--only", default="", help="comma-separated task names")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    sets = ["tune", "held-out"] if args.set == "all" else [args.set]
    agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    unknown = [a for a in agents if a not in AGENTS]
    if unknown:
        parser.error(f"unknown agent {', '.join(unknown)}; choose among {', '.join(AGENTS)}")
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    scratch = Path(tempfile.mkdtemp(prefix="embedded-agent-bench-", dir="/tmp"))
    os.chmod(scratch, 0o711)
    server, upstream = start_llama_server(args.model, args.threads, args.ctx, scratch / "llama-server.log")
    relay = CountingRelay(upstream)
    relay.transcript = args.out.with_suffix(".transcript.jsonl")
    relay.transcript.parent.mkdir(parents=True, exist_ok=True)
    relay.transcript.write_text("")
    rows: list[dict] = []
    print(f"model {args.model.name}, {args.threads} threads, ctx {args.ctx}; load before: {load()}", flush=True)
    try:
        for set_name in sets:
            for task in SETS[set_name]:
                if only and task.name not in only:
                    continue
                for agent in agents:
                    work = scratch / f"{set_name}-{task.name}-{agent}"
                    repo = make_repo(work / "origin", task)
                    relay.take()
                    load_before = load()
                    outcome = AGENTS[agent](task, repo, relay.url, work / "run", args.job_seconds)
                    usage = relay.take()
                    solved, check = accepted(task, outcome["patch"], work / "check")
                    row = {"set": set_name, "task": task.name, "kind": task.kind, "agent": agent, "solved": solved,
                           "wall_s": round(outcome["wall_s"], 1), "tokens": usage["prompt_tokens"] + usage["completion_tokens"],
                           **usage, "status": outcome["status"], "steps": outcome.get("steps"), "check": check,
                           "note": outcome.get("note", ""), "result_kind": outcome.get("kind"),
                           "kind_reason": outcome.get("kind_reason", ""), "self_review": outcome.get("self_review"),
                           "load_before": load_before, "load_after": load(),
                           "patch": outcome["patch"][:4000]}
                    rows.append(row)
                    write_results(args, rows, sets, agents, partial=True)
                    print(f"{set_name:8} {task.name:20} {agent:8} {'SOLVED' if solved else 'failed':7} "
                          f"{row['wall_s']:7.1f} s {row['tokens']:7d} tok  {row['status']}  kind {row['result_kind'] or '-'}"
                          + (f"  self-review {_review_line(row['self_review'])}" if row["self_review"] else "")
                          + f"  load {row['load_after']}",
                          flush=True)
    finally:
        relay.close()
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
    print_table(write_results(args, rows, sets, agents, partial=False))
    print(f"wrote {args.out}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


def write_results(args, rows: list[dict], sets: list[str], agents: list[str], *, partial: bool) -> list[dict]:
    """The JSON after every task (a long run on a busy machine still leaves its figures), complete at the end."""
    summary = summarise(rows, sets, agents)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model.name, "threads": args.threads, "ctx": args.ctx,
                                    "job_seconds": args.job_seconds, "cpus": os.cpu_count(), "partial": partial,
                                    "summary": summary, "rows": rows,
                                    "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))
    return summary


def summarise(rows: list[dict], sets: list[str], agents: list[str]) -> list[dict]:
    out = []
    for set_name in sets:
        for agent in agents:
            mine = [r for r in rows if r["set"] == set_name and r["agent"] == agent]
            if not mine:
                continue
            solved = [r for r in mine if r["solved"]]
            kinds: dict[str, int] = {}
            for r in mine:
                kinds[r.get("result_kind") or "-"] = kinds.get(r.get("result_kind") or "-", 0) + 1
            fixes = [r for r in mine if r.get("result_kind") == "fix"]
            out.append({"set": set_name, "agent": agent, "solved": len(solved), "total": len(mine),
                        "kinds": kinds,
                        # a "fix" the hidden tests reject, and a "draft" they accept: where the kind misled
                        "fix_but_unsolved": sum(1 for r in fixes if not r["solved"]),
                        "draft_but_solved": sum(1 for r in mine if r.get("result_kind") == "draft" and r["solved"]),
                        "wall_s_mean": round(sum(r["wall_s"] for r in mine) / len(mine), 1),
                        "wall_s_max": max(r["wall_s"] for r in mine),
                        "tokens_per_solved": round(sum(r["tokens"] for r in mine) / len(solved)) if solved else None})
    return out


def _review_line(review: dict) -> str:
    if review.get("status") != "done":
        return f"incomplete ({review.get('reason', '')[:80]})"
    return f"{review.get('verdict')} {review.get('findings')} findings, {review.get('verified')} verified"


def print_table(summary: list[dict]) -> None:
    print(f"\n{'set':9} {'agent':10} {'solved':>7} {'mean s':>8} {'max s':>7} {'tokens/solved':>14}  kinds "
          "(fix-unsolved, draft-solved)")
    for s in summary:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(s["kinds"].items()))
        print(f"{s['set']:9} {s['agent']:10} {s['solved']:>3}/{s['total']:<3} {s['wall_s_mean']:>8} {s['wall_s_max']:>7} "
              f"{s['tokens_per_solved'] if s['tokens_per_solved'] is not None else '-':>14}  {kinds} "
              f"({s['fix_but_unsolved']}, {s['draft_but_solved']})")


if __name__ == "__main__":
    sys.exit(main())
