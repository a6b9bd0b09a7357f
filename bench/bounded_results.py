"""Bounded results: the server's memory and the stored patch stay small whatever the agent writes.

    python bench/bounded_results.py [--big-mb 1024] [--files 100000]

Runs `assistant run --json` (a real process, the real Docker sandbox, the scripted model) three times:
a job that changes one line (the peer: what any job costs), a job whose agent writes one file of random bytes
(1 GB by default), and a job whose agent writes 100,000 small files. For each: the CLI process's peak RSS,
the stored patch's size, what the diff lists as omitted, and the wall time. Prints a table and writes
bench/results/bounded_results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assistant.testing.scripted_model import Reply, ScriptedModelServer, by_turn  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bounded_results.json"
AGENT = "You are a careful software engineer"


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    (repo / "app.py").write_text("VALUE = 1\n")
    git = ["git", "-c", "user.email=bench@example.invalid", "-c", "user.name=bench"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], cwd=repo, check=True)
    return repo


def run_case(server: ScriptedModelServer, repo: Path, data_dir: Path, command: str) -> dict:
    server.reset()
    server.when_system_contains(AGENT, [by_turn(Reply.call("shell", command=command),
                                                Reply.text("Wrote what was asked."))], repeat_last=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTANT_", "OPENAI_"))}
    env.update(ASSISTANT_DATA_DIR=str(data_dir), OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="k",
               ASSISTANT_MODEL="scripted-model", ASSISTANT_SANDBOX_BACKEND="docker", ASSISTANT_COMMAND_TIMEOUT_S="900",
               ASSISTANT_CONFIG=str(data_dir / "none.toml"), NO_PROXY="127.0.0.1,localhost")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "assistant.cli", "run", "--json", "--repo", str(repo), "Write"],
                          env=env, capture_output=True, text=True, timeout=3600)
    seconds = time.monotonic() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = json.loads(proc.stdout)
    return {
        "status": result["status"], "reason": result["reason"], "seconds": seconds,
        # ru_maxrss of children is the largest child so far: a case that stays under an earlier one reads as
        # "no more than" that figure, which still bounds it.
        "peak_rss_mb_at_most": max(peak_kb, before) / 1024, "peak_rss_mb_rose": peak_kb > before,
        "patch_bytes": len(result["patch"].encode()), "diff_notes": result["outcome"].get("diff_notes", []),
        "files_in_diff": len(result["outcome"].get("files", [])),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mb", type=int, default=1024)
    parser.add_argument("--files", type=int, default=100_000)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bounded-bench-", dir="/tmp"))
    repo = make_repo(scratch)
    cases = {
        "one-line change (peer)": "sed -i 's/1/2/' app.py",
        f"{args.big_mb} MB random file": f"head -c {args.big_mb}M /dev/urandom > big.bin && ls -l big.bin",
        f"{args.files:,} small files": (f"mkdir many && python3 -c \"[open('many/f%d.txt' % i, 'w').write(str(i)) "
                                        f"for i in range({args.files})]\" && ls many | wc -l"),
    }
    results = {}
    with ScriptedModelServer() as server:
        for index, (name, command) in enumerate(cases.items()):
            print(f"{name} ...", file=sys.stderr)
            results[name] = run_case(server, repo, scratch / f"data{index}", command)
    print(f"{'case':28} {'status':10} {'peak RSS (MB)':>14} {'patch (bytes)':>14} {'files':>7} {'time (s)':>9}")
    for name, r in results.items():
        rss = f"{'' if r['peak_rss_mb_rose'] else '<= '}{r['peak_rss_mb_at_most']:.0f}"
        print(f"{name:28} {r['status']:10} {rss:>14} {r['patch_bytes']:>14,} {r['files_in_diff']:>7,} {r['seconds']:>9.1f}")
        for note in r["diff_notes"][:2]:
            print(f"{'':28} note: {note[:110]}")
    peer = results["one-line change (peer)"]["peak_rss_mb_at_most"]
    worst = max(r["peak_rss_mb_at_most"] for r in results.values())
    print(f"worst peak RSS / one-line job: {worst / peer:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"cases": results, "worst_over_peer": worst / peer,
                                   "big_mb": args.big_mb, "files": args.files}, indent=1))
    print(f"wrote {RESULTS}")
    subprocess.run(["rm", "-rf", str(scratch)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
