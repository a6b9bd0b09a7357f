"""Sandbox benchmark: our sandbox side by side with the peer way (the docker CLI, as mini-swe-agent drives it).

    python bench/sandbox.py [--runs 7] [--exec-n 100] [--no-local] [--images node,go,...|none] [--rebuild]
                            [--rebuild-default] [--only python-cold]

Measures, in one run:
  cold start   request -> a ready shell in /workspace with a small repo in it, no setup (ours: the repo
               streamed in as a bundle and cloned inside; the peer: a host clone bind-mounted)
  warm start   a job whose setup installs a package: from the setup cache vs running the setup
  exec         per-command cost of `true`
  images       per toolchain image (and one image with every toolchain, the other shape): build time (when
               built in this run: --rebuild, or missing), size (and the layer on top of the default image),
               cold start of a repository that calls for it (the image chosen from its files) vs the docker CLI
  python       the Python repository's cold start in one interleaved loop: on the default image as jobs get it
               (toolchain detection on), with detection off (as before toolchain images), and on the image with
               every toolchain (where the one-image shape would start it), with the docker CLI beside; each round
               starts with the next shape (a round's first start follows the previous round's removals, so no
               shape keeps that place); --only python-cold measures this alone (--runs rounds; the all-toolchains
               image only if it is built already), to bench/results/sandbox-python-cold.json
  default      --rebuild-default: the default image's own build (debootstrap and import), under a scratch name
               that is removed afterwards
Prints a table and writes bench/results/sandbox.json (medians, ratios, targets).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.sandbox import PrepareRequest, SandboxConfig, build_image, prepare  # noqa: E402
from assistant.sandbox.cache import SetupCache  # noqa: E402
from assistant.sandbox.engine import docker_client, ensure_docker  # noqa: E402
from assistant.sandbox.toolchains import TOOLCHAINS, ensure_toolchain_image, toolchain_image_status  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sandbox.json"
SETUP = ["python3 -m venv /home/agent/.venv", "pip install --no-cache-dir six"]
GIT = ["git", "-c", "user.email=bench@example.invalid", "-c", "user.name=bench"]


def small_repo(root: Path) -> Path:
    repo = root / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "README.md").write_text("# bench\n")
    for index in range(20):
        (repo / "src" / f"module_{index}.py").write_text(f"def f{index}():\n    return {index}\n" * 20)
    subprocess.run([*GIT, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "bench"], cwd=repo, check=True)
    return repo


def host_clone(repo: Path, dest: Path) -> None:
    """The peer's way in: a clone on the host, bind-mounted into the container (ours streams a bundle in)."""
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(repo), str(dest)], check=True)
    subprocess.run(["chown", "-R", "1000:1000", str(dest)], check=True)


class CliPeer:
    """The peer way: `docker run -d`, then one `docker exec` subprocess per command."""

    def __init__(self, image: str, workspace: Path, network: str):
        self.name = f"bench-peer-{os.getpid()}-{time.monotonic_ns()}"
        subprocess.run(["docker", "run", "-d", "--rm", "--name", self.name, "--network", network,
                        "-u", "1000:1000", "-v", f"{workspace}:/workspace", "-w", "/workspace",
                        image, "sleep", "infinity"], check=True, capture_output=True)

    def exec(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "exec", "-w", "/workspace", self.name, "bash", "-c", command],
                              capture_output=True, text=True)

    def close(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True)


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_cold(config: SandboxConfig, repo: Path, runs: int, scratch: Path) -> dict:
    ours, peer = [], []
    for run in range(runs):
        holder = {}

        def our_start() -> None:
            prepared = prepare(PrepareRequest(job_id=f"cold-{run}", repo=str(repo), setup=[]), config)
            assert prepared.sandbox.exec("pwd").output == "/workspace\n"
            holder["sandbox"] = prepared.sandbox

        ours.append(timed(our_start))
        holder["sandbox"].close()

        def peer_start() -> None:
            workspace = scratch / f"peer-cold-{run}"
            host_clone(repo, workspace)
            holder["peer"] = CliPeer(config.image, workspace, "none")
            assert holder["peer"].exec("pwd").stdout == "/workspace\n"

        peer.append(timed(peer_start))
        holder["peer"].close()
    return {"ours_s": ours, "peer_s": peer}


def bench_warm(config: SandboxConfig, repo: Path, runs: int, scratch: Path) -> dict:
    cached = SandboxConfig(**{**config.__dict__, "cache_enabled": True})
    uncached = SandboxConfig(**{**config.__dict__, "cache_enabled": False})
    setup_runs, warm_runs, peer_runs = [], [], []
    cache = SetupCache(cached)
    cache.clear()
    try:
        prime = prepare(PrepareRequest(job_id="warm-prime", repo=str(repo), setup=SETUP), cached)
        prime.sandbox.close()
        for run in range(runs):
            prepared = None

            # Both time the request up to a ready, offline sandbox; the checks that the package is really
            # there run after the clock stops.
            def with_setup() -> None:
                nonlocal prepared
                prepared = prepare(PrepareRequest(job_id=f"setup-{run}", repo=str(repo), setup=SETUP), uncached)

            setup_runs.append(timed(with_setup))
            assert prepared.sandbox.exec("python -c 'import six'").exit_code == 0
            prepared.sandbox.close()

            def from_cache() -> None:
                nonlocal prepared
                prepared = prepare(PrepareRequest(job_id=f"warm-{run}", repo=str(repo), setup=SETUP), cached)

            warm_runs.append(timed(from_cache))
            assert prepared.cache_hit
            assert prepared.sandbox.exec("python -c 'import six'").exit_code == 0
            prepared.sandbox.close()

            peer = None

            def peer_setup() -> None:
                nonlocal peer
                workspace = scratch / f"peer-setup-{run}"
                host_clone(repo, workspace)
                peer = CliPeer(config.image, workspace, "bridge")
                for command in SETUP:
                    assert peer.exec(command).returncode == 0
                subprocess.run(["docker", "network", "disconnect", "bridge", peer.name], check=True)

            peer_runs.append(timed(peer_setup))
            assert peer.exec("/home/agent/.venv/bin/python -c 'import six'").returncode == 0
            peer.close()
    finally:
        cache.clear()
    return {"ours_setup_s": setup_runs, "ours_warm_s": warm_runs, "peer_setup_s": peer_runs}


def bench_exec(config: SandboxConfig, repo: Path, count: int, scratch: Path) -> dict:
    prepared = prepare(PrepareRequest(job_id="exec", repo=str(repo), setup=[]), config)
    try:
        ours = [timed(lambda: prepared.sandbox.exec("true")) for _ in range(count)]
    finally:
        prepared.sandbox.close()
    workspace = scratch / "peer-exec"
    host_clone(repo, workspace)
    peer = CliPeer(config.image, workspace, "none")
    try:
        cli = [timed(lambda: peer.exec("true")) for _ in range(count)]
        container = docker_client().containers.get(peer.name)
        sdk = [timed(lambda: container.exec_run(["bash", "-c", "true"], workdir="/workspace"))
               for _ in range(count)]
    finally:
        peer.close()
    return {"ours_s": ours, "peer_cli_s": cli, "peer_sdk_exec_run_s": sdk}


def bench_local(base: SandboxConfig, repo: Path, runs: int, count: int) -> dict:
    config = SandboxConfig(**{**base.__dict__, "backend": "local"})
    starts, sandbox = [], None
    for run in range(runs):
        def start() -> None:
            nonlocal sandbox
            sandbox = prepare(PrepareRequest(job_id=f"local-{run}", repo=str(repo), setup=[]), config).sandbox
            assert sandbox.exec("pwd").output == "/workspace\n"

        starts.append(timed(start))
        if run < runs - 1:
            sandbox.close()
    try:
        execs = [timed(lambda: sandbox.exec("true")) for _ in range(count)]
    finally:
        sandbox.close()
    return {"cold_s": starts, "exec_s": execs}


MARKERS = {"node": {"package.json": "{}"}, "go": {"go.mod": "module example.org/bench\n"},
           "rust": {"Cargo.toml": "[package]\nname = \"bench\"\nversion = \"0.1.0\"\n"},
           "java": {"pom.xml": "<project/>\n"}, "ruby": {"Gemfile": ""}, "php": {"composer.json": "{}"}}


def marked_repo(root: Path, names: list[str]) -> Path:
    """The small repository with the files that call for these toolchains (all of them: named in its config)."""
    repo = root / f"repo-{'-'.join(names)}"
    subprocess.run(["git", "clone", "-q", str(root / "repo"), str(repo)], check=True)
    files = {}
    if len(names) == 1:
        files.update(MARKERS[names[0]])
    else:
        files[".assistant/config.toml"] = f"[sandbox]\ntoolchains = {json.dumps(names)}\n"
    for path, text in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "toolchain"], cwd=repo, check=True)
    return repo


def bench_images(config: SandboxConfig, root: Path, shapes: list[list[str]], rebuild: bool, runs: int,
                 scratch: Path) -> dict:
    client = docker_client()
    base_size = client.images.get(config.image).attrs["Size"]
    out = {}
    for names in shapes:
        label = "+".join(names) if len(names) < len(TOOLCHAINS) else "all toolchains"
        image, ready, _ = toolchain_image_status(config.image, names)
        build_s = None
        if rebuild or not ready:
            print(f"building {image} ...", file=sys.stderr)
            started = time.perf_counter()
            ensure_toolchain_image(config.image, names, on_log=lambda line: print("  " + line, file=sys.stderr),
                                   force=rebuild)
            build_s = time.perf_counter() - started
        size = client.images.get(image).attrs["Size"]
        repo = marked_repo(root, names)
        ours, peer = [], []
        for run in range(runs):
            holder = {}

            def our_start() -> None:
                prepared = prepare(PrepareRequest(job_id=f"img-{run}", repo=str(repo), setup=[]), config)
                assert prepared.image == image, prepared.image
                assert prepared.sandbox.exec("pwd").output == "/workspace\n"
                holder["sandbox"] = prepared.sandbox

            ours.append(timed(our_start))
            holder["sandbox"].close()

            def peer_start() -> None:
                workspace = scratch / f"peer-img-{label}-{run}"
                host_clone(repo, workspace)
                holder["peer"] = CliPeer(image, workspace, "none")
                assert holder["peer"].exec("pwd").stdout == "/workspace\n"

            peer.append(timed(peer_start))
            holder["peer"].close()
        out[label] = {"image": image, "build_s": build_s, "size_mb": size / 1e6, "layer_mb": (size - base_size) / 1e6,
                      "cold_ours_s": ours, "cold_peer_s": peer}
    out["default"] = {"image": config.image, "size_mb": base_size / 1e6}
    return out


def bench_python_shapes(config: SandboxConfig, repo: Path, all_image: str | None, runs: int, scratch: Path) -> dict:
    """The Python repository's cold start on each shape's image, interleaved run by run (a busy machine's drift
    falls on all of them alike), each round starting one step further along (ours and the CLI's alike), so that no
    shape always comes first, after the previous round's container removals."""
    shapes = {"default": (config, config.image),
              "default_detection_off": (dataclasses.replace(config, toolchain_images=False), config.image)}
    if all_image:
        shapes["all_toolchains"] = (dataclasses.replace(config, image=all_image, toolchain_images=False), all_image)
    peers = {"default": config.image, **({"all_toolchains": all_image} if all_image else {})}
    ours = {label: [] for label in shapes}
    cli = {label: [] for label in peers}
    steps = [("ours", label) for label in shapes] + [("peer", label) for label in peers]
    for run in range(runs):
        for kind, label in steps[run % len(steps):] + steps[:run % len(steps)]:
            holder = {}
            if kind == "ours":
                shape_config, image = shapes[label]

                def our_start() -> None:
                    prepared = prepare(PrepareRequest(job_id=f"py-{label}-{run}", repo=str(repo), setup=[]),
                                       shape_config)
                    assert prepared.image == image, prepared.image
                    assert prepared.sandbox.exec("pwd").output == "/workspace\n"
                    holder["sandbox"] = prepared.sandbox

                ours[label].append(timed(our_start))
                holder["sandbox"].close()
            else:
                def peer_start() -> None:
                    workspace = scratch / f"peer-py-{label}-{run}"
                    host_clone(repo, workspace)
                    holder["peer"] = CliPeer(peers[label], workspace, "none")
                    assert holder["peer"].exec("pwd").stdout == "/workspace\n"

                cli[label].append(timed(peer_start))
                holder["peer"].close()
    return {"images": {label: image for label, (_, image) in shapes.items()}, "ours_s": ours, "peer_cli_s": cli}


def bench_default_build(config: SandboxConfig, scratch: Path) -> dict:
    """The default image built from nothing (debootstrap with an empty package cache, then import) under a name of
    its own, so the image jobs use stays as it is; removed afterwards."""
    name = f"assistant-sandbox-bench-{os.getpid()}:latest"
    build_config = dataclasses.replace(config, image=name, data_dir=scratch / "default-build")
    started = time.perf_counter()
    try:
        build_image(build_config, on_log=lambda line: print("  " + line, file=sys.stderr), force=True)
        build_s = time.perf_counter() - started
        size = docker_client().images.get(name).attrs["Size"]
    finally:
        try:
            docker_client().images.remove(name, force=True)
        except Exception:
            pass
    return {"image": name, "build_s": build_s, "size_mb": size / 1e6}


def median(values: list[float]) -> float:
    return statistics.median(values)


def report_python(python: dict, runs: int, summary: dict, targets: dict) -> None:
    """The Python repository's figures: medians per shape, detection on over off (of the medians, and the median of
    each round's own ratio), ours over the docker CLI; printed and added to summary and targets."""
    summary["python_cold_start_s"] = {label: median(values) for label, values in python["ours_s"].items()}
    summary["python_cold_start_peer_cli_s"] = {label: median(values) for label, values in python["peer_cli_s"].items()}
    on, off = python["ours_s"]["default"], python["ours_s"]["default_detection_off"]
    ratios = summary.setdefault("ratios", {})
    ratios["python_cold_detection_on_over_off"] = median(on) / median(off)
    ratios["python_cold_detection_on_over_off_per_round"] = median([a / b for a, b in zip(on, off)])
    ratios["python_cold_ours_over_cli"] = median(on) / summary["python_cold_start_peer_cli_s"]["default"]
    targets["python_cold_start_not_slower_than_before_toolchain_images"] = (
        ratios["python_cold_detection_on_over_off"] <= 1.10)  # within the noise of a busy 2-core machine
    print(f"\npython repository, cold start (s, median of {runs}, interleaved)   ours    docker CLI")
    names = {"default": f"{python['images']['default']} (as jobs get it)",
             "default_detection_off": f"{python['images']['default']}, detection off (before)",
             "all_toolchains": f"{python['images'].get('all_toolchains')} (one-image shape)"}
    for label, seconds in summary["python_cold_start_s"].items():
        peer = summary["python_cold_start_peer_cli_s"].get(label)
        print(f"  {names[label]:62} {seconds:6.3f} {peer:10.3f}" if peer is not None else
              f"  {names[label]:62} {seconds:6.3f}")
    print(f"  detection on / off: {ratios['python_cold_detection_on_over_off']:.2f}x of the medians, "
          f"{ratios['python_cold_detection_on_over_off_per_round']:.2f}x the median round (target <= 1.10x: "
          f"{'yes' if targets['python_cold_start_not_slower_than_before_toolchain_images'] else 'NO'})")
    print(f"  ours / docker CLI (default image): {ratios['python_cold_ours_over_cli']:.2f}x")


def python_cold_only(runs: int) -> int:
    """--only python-cold: the Python repository's interleaved cold start and nothing else (the default image is
    built if missing; the all-toolchains image is measured only if it is built and current)."""
    ensure_docker()
    scratch = Path(tempfile.mkdtemp(prefix="sandbox-bench-", dir="/tmp"))
    os.chmod(scratch, 0o711)
    config = SandboxConfig(data_dir=scratch / "data", backend="docker", cache_enabled=False)
    build_image(config, on_log=lambda line: print(line, file=sys.stderr))
    all_image, ready, _ = toolchain_image_status(config.image, list(TOOLCHAINS))
    try:
        repo = small_repo(scratch)
        print(f"python repository on each shape's image, {runs} rounds ...", file=sys.stderr)
        python = bench_python_shapes(config, repo, all_image if ready else None, runs, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary: dict = {}
    targets: dict = {}
    report_python(python, runs, summary, targets)
    out = RESULTS.with_name("sandbox-python-cold.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "targets_met": targets, "raw": {"python": python}, "runs": runs},
                              indent=1))
    print(f"wrote {out}")
    return 0 if all(targets.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--exec-n", type=int, default=100)
    parser.add_argument("--no-local", action="store_true", help="skip the bubblewrap backend's figures")
    parser.add_argument("--images", default=",".join(TOOLCHAINS) + ",all",
                        help="toolchain images to measure, comma-separated (all: one image with every toolchain); none")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the toolchain images to time their builds")
    parser.add_argument("--rebuild-default", action="store_true",
                        help="time building the default image too (under a scratch name, removed afterwards)")
    parser.add_argument("--only", choices=["python-cold"],
                        help="python-cold: only the Python repository's interleaved cold start (--runs rounds)")
    args = parser.parse_args()
    if args.only == "python-cold":
        return python_cold_only(args.runs)
    shapes = [] if args.images == "none" else [
        list(TOOLCHAINS) if name == "all" else [name] for name in args.images.split(",") if name.strip()]

    ensure_docker()
    scratch = Path(tempfile.mkdtemp(prefix="sandbox-bench-", dir="/tmp"))
    os.chmod(scratch, 0o711)
    config = SandboxConfig(data_dir=scratch / "data", backend="docker", cache_enabled=False)
    build_image(config, on_log=lambda line: print(line, file=sys.stderr))
    try:
        repo = small_repo(scratch)
        print("cold start ...", file=sys.stderr)
        cold = bench_cold(config, repo, args.runs, scratch)
        print("warm start vs setup ...", file=sys.stderr)
        warm = bench_warm(config, repo, max(3, args.runs // 2), scratch)
        print("exec overhead ...", file=sys.stderr)
        execs = bench_exec(config, repo, args.exec_n, scratch)
        local = None if args.no_local else bench_local(config, repo, args.runs, args.exec_n)
        print("toolchain images ...", file=sys.stderr)
        images = bench_images(config, scratch, shapes, args.rebuild, max(3, args.runs // 2), scratch)
        print("python repository on each shape's image ...", file=sys.stderr)
        python = bench_python_shapes(config, repo, images.get("all toolchains", {}).get("image"), args.runs, scratch)
        default_build = None
        if args.rebuild_default:
            print("default image build ...", file=sys.stderr)
            default_build = bench_default_build(config, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    summary = {
        "cold_start_s": {"ours": median(cold["ours_s"]), "peer_cli": median(cold["peer_s"])},
        "warm_start_s": {"ours_from_cache": median(warm["ours_warm_s"]), "ours_running_setup": median(warm["ours_setup_s"]),
                         "peer_cli_running_setup": median(warm["peer_setup_s"])},
        "exec_true_ms": {"ours": median(execs["ours_s"]) * 1000, "peer_cli": median(execs["peer_cli_s"]) * 1000,
                         "peer_sdk_exec_run": median(execs["peer_sdk_exec_run_s"]) * 1000},
    }
    summary["ratios"] = {
        "warm_speedup_vs_setup": summary["warm_start_s"]["ours_running_setup"] / summary["warm_start_s"]["ours_from_cache"],
        "exec_ours_over_cli": summary["exec_true_ms"]["ours"] / summary["exec_true_ms"]["peer_cli"],
        "cold_ours_over_cli": summary["cold_start_s"]["ours"] / summary["cold_start_s"]["peer_cli"],
    }
    targets = {
        "cold_start_at_most_0.6_s": summary["cold_start_s"]["ours"] <= 0.6,
        "cold_start_ahead_of_the_cli": summary["ratios"]["cold_ours_over_cli"] <= 1.0,
        "warm_at_least_10x_faster_than_setup": summary["ratios"]["warm_speedup_vs_setup"] >= 10,
        "exec_at_most_half_the_cli": summary["ratios"]["exec_ours_over_cli"] <= 0.5,
    }
    if local:
        summary["local_backend"] = {"cold_start_s": median(local["cold_s"]), "exec_true_ms": median(local["exec_s"]) * 1000}

    rows = [
        ("cold start (s, median)", f"{summary['cold_start_s']['ours']:.3f}", f"{summary['cold_start_s']['peer_cli']:.3f}",
         "<= 0.6 s", targets["cold_start_at_most_0.6_s"]),
        ("cold start ours / CLI", f"{summary['ratios']['cold_ours_over_cli']:.2f}x", "", "<= 1x",
         targets["cold_start_ahead_of_the_cli"]),
        ("warm start from cache (s)", f"{summary['warm_start_s']['ours_from_cache']:.3f}", "n/a (no cache)", "", None),
        ("start running setup (s)", f"{summary['warm_start_s']['ours_running_setup']:.3f}",
         f"{summary['warm_start_s']['peer_cli_running_setup']:.3f}", "", None),
        ("warm speed-up vs setup", f"{summary['ratios']['warm_speedup_vs_setup']:.1f}x", "", ">= 10x",
         targets["warm_at_least_10x_faster_than_setup"]),
        ("exec `true` (ms, median)", f"{summary['exec_true_ms']['ours']:.2f}", f"{summary['exec_true_ms']['peer_cli']:.2f}",
         "<= half the CLI", targets["exec_at_most_half_the_cli"]),
        ("  SDK exec_run (ms)", "", f"{summary['exec_true_ms']['peer_sdk_exec_run']:.2f}", "", None),
    ]
    if local:
        rows += [("local backend cold start (s)", f"{summary['local_backend']['cold_start_s']:.3f}", "", "", None),
                 ("local backend exec `true` (ms)", f"{summary['local_backend']['exec_true_ms']:.2f}", "", "", None)]
    print(f"{'measure':34} {'ours':>10} {'docker CLI':>14}  {'target':16} met")
    for name, ours, peer, target, met in rows:
        mark = "" if met is None else ("yes" if met else "NO")
        print(f"{name:34} {ours:>10} {peer:>14}  {target:16} {mark}")

    summary["images"] = {}
    if shapes:
        print(f"\n{'image':42} {'build s':>8} {'size MB':>8} {'layer MB':>9} {'cold s':>7} {'CLI s':>7} {'ratio':>6}")
        print(f"{images['default']['image']:42} {'':>8} {images['default']['size_mb']:8.0f} {'':>9} "
              f"{summary['cold_start_s']['ours']:7.3f} {summary['cold_start_s']['peer_cli']:7.3f} "
              f"{summary['ratios']['cold_ours_over_cli']:5.2f}x")
        for label, row in images.items():
            if label == "default":
                continue
            cold, cli = median(row["cold_ours_s"]), median(row["cold_peer_s"])
            summary["images"][label] = {"image": row["image"], "build_s": row["build_s"], "size_mb": row["size_mb"],
                                        "layer_mb": row["layer_mb"], "cold_start_s": cold, "cold_peer_cli_s": cli,
                                        "cold_ours_over_cli": cold / cli}
            build = f"{row['build_s']:.0f}" if row["build_s"] is not None else "(kept)"
            print(f"{row['image']:42} {build:>8} {row['size_mb']:8.0f} {row['layer_mb']:9.0f} {cold:7.3f} {cli:7.3f} "
                  f"{cold / cli:5.2f}x")
        singles = [row for label, row in summary["images"].items() if label in TOOLCHAINS]
        if singles:
            print(f"per-language layers together: {sum(r['layer_mb'] for r in singles):.0f} MB"
                  + (f", built in {sum(r['build_s'] for r in singles):.0f} s" if all(r['build_s'] for r in singles) else ""))

    report_python(python, args.runs, summary, targets)
    if default_build:
        summary["default_image_build"] = {"build_s": default_build["build_s"], "size_mb": default_build["size_mb"]}
        print(f"\ndefault image built from nothing: {default_build['build_s']:.0f} s, {default_build['size_mb']:.0f} MB")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"summary": summary, "targets_met": targets, "raw": {
        "cold": cold, "warm": warm, "exec": execs, "local": local, "images": images, "python": python,
        "default_build": default_build}, "runs": args.runs, "exec_n": args.exec_n,
        "setup_commands": SETUP}, indent=1))
    print(f"wrote {RESULTS}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
