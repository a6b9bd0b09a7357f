"""What the per-job disk cap costs: a sandbox's start, first command, close and setup-cache commit on an engine that
scripts/ensure-docker.sh starts (btrfs data root with quotas, each container capped) against the same on an engine
with overlay2 on the host's ext4 (no cap possible), in one run, rounds interleaved so both see the same load.

    python bench/diskcap.py [--runs 7] [--files 2000]

Starts (or reuses) two extra engines beside the default one: `benchcap` (the script's default: btrfs) and
`benchplain` (ENGINE_DISK_QUOTA=0: overlay2), copies the sandbox image onto them from the default engine (or any
engine given with --from), and stops them at the end. Prints a table (medians, ratios) and writes
bench/results/diskcap.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from assistant.sandbox.base import DEFAULT_IMAGE, SandboxConfig  # noqa: E402
from assistant.sandbox.docker_backend import DockerSandbox  # noqa: E402
from assistant.sandbox.engine import EngineSpec, docker_client  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "diskcap.json"
ENGINES = {"btrfs, capped": ("benchcap", {}, 4096), "overlay2, no cap": ("benchplain", {"ENGINE_DISK_QUOTA": "0"}, 0)}


def socket(name: str) -> str:
    return f"unix:///run/assistant-engines/{name}.sock"


def start_engine(name: str, env: dict, source: str) -> EngineSpec:
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "ensure-docker.sh"), name], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=120)
    if done.returncode != 0:
        sys.exit(done.stderr)
    have = subprocess.run(["docker", "-H", socket(name), "image", "inspect", DEFAULT_IMAGE], capture_output=True)
    if have.returncode != 0:
        subprocess.run(f"docker -H {source} save {DEFAULT_IMAGE} | docker -H {socket(name)} load -q", shell=True,
                       check=True, capture_output=True, timeout=600)
    return EngineSpec(name, socket(name))


def one_round(engine: EngineSpec, disk_mb: int, files: int, data_dir: Path) -> dict[str, float]:
    config = SandboxConfig(data_dir=data_dir, disk_mb=disk_mb, cache_enabled=False)
    clock = time.monotonic()
    sandbox = DockerSandbox.start(job_id="bench", config=config, image=DEFAULT_IMAGE, network=False, engine=engine)
    started = time.monotonic()
    sandbox.exec("true")
    first = time.monotonic()
    # What a setup leaves (a virtualenv's worth of small files), then the setup cache's commit of it.
    sandbox.exec(f"mkdir -p /workspace/.venv && cd /workspace/.venv && for i in $(seq {files}); do "
                 f"head -c 4096 /dev/urandom > f$i; done", timeout_s=600)
    clock_commit = time.monotonic()
    image = sandbox.commit("assistant-bench", "diskcap", {"assistant.bench": "1"})
    committed = time.monotonic()
    sandbox.close()
    closed = time.monotonic()
    docker_client(engine).images.remove(image, force=True)
    return {"start_ms": (started - clock) * 1000, "first_command_ms": (first - started) * 1000,
            "commit_ms": (committed - clock_commit) * 1000, "close_ms": (closed - committed) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--from", dest="source", default="unix:///var/run/docker.sock",
                        help="the engine that holds the sandbox image")
    args = parser.parse_args()
    engines = {label: (start_engine(name, env, args.source), disk_mb) for label, (name, env, disk_mb) in ENGINES.items()}
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in engines}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.runs):
            for label, (engine, disk_mb) in engines.items():
                samples[label].append(one_round(engine, disk_mb, args.files, Path(scratch)))
    for name, _env, _mb in ENGINES.values():
        pid = Path(f"/run/assistant-engines/{name}.pid")
        if pid.exists():
            os.kill(int(pid.read_text()), signal.SIGTERM)
    keys = ["start_ms", "first_command_ms", "commit_ms", "close_ms"]
    medians = {label: {k: statistics.median(s[k] for s in runs) for k in keys} for label, runs in samples.items()}
    capped, plain = medians["btrfs, capped"], medians["overlay2, no cap"]
    print(f"{'median of ' + str(args.runs):<22}" + "".join(f"{k:>18}" for k in keys))
    for label, row in medians.items():
        print(f"{label:<22}" + "".join(f"{row[k]:>18.1f}" for k in keys))
    print(f"{'ratio capped/plain':<22}" + "".join(f"{capped[k] / plain[k]:>18.2f}" for k in keys))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"runs": args.runs, "files": args.files, "medians": medians, "samples": samples,
                                   "load_average": os.getloadavg()}, indent=2))
    print(f"wrote {RESULTS.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
