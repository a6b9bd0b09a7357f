"""exec behaviour, run on every backend: output, streaming, timeouts, limits, isolation."""

from __future__ import annotations

import resource
import threading
import time

import pytest

from assistant.sandbox import SandboxError


def test_exit_code_output_and_duration(open_sandbox):
    sandbox = open_sandbox()
    result = sandbox.exec("echo out; echo err >&2; exit 3")
    assert result.exit_code == 3
    assert result.output == "out\nerr\n"
    assert 0 < result.duration_s < 5
    assert not result.timed_out and not result.truncated


def test_runs_in_the_workspace_as_the_agent_user_with_git_history(open_sandbox):
    sandbox = open_sandbox()
    result = sandbox.exec("pwd; id -u; git log --oneline | wc -l; cat src/app.py")
    assert result.output.splitlines()[:3] == ["/workspace", "1000", "1"]
    assert "return 42" in result.output
    assert sandbox.exec("touch /workspace/new_file && echo ok").output == "ok\n"
    assert sandbox.exec("test -f new_file && echo there").output == "there\n"


def test_workdir_and_env(open_sandbox):
    sandbox = open_sandbox()
    result = sandbox.exec('pwd; echo "$GREETING"', workdir="/workspace/src", env={"GREETING": "hello there"})
    assert result.output == "/workspace/src\nhello there\n"
    missing = sandbox.exec("pwd", workdir="/workspace/nowhere")
    assert missing.exit_code is None and "could not start" in missing.output


def test_output_streams_while_the_command_runs(open_sandbox):
    sandbox = open_sandbox()
    arrivals: list[tuple[float, str]] = []
    started = time.monotonic()
    result = sandbox.exec("echo first; sleep 1; echo second",
                          on_output=lambda chunk: arrivals.append((time.monotonic() - started, chunk)))
    assert result.output == "first\nsecond\n"
    assert arrivals[0][1].startswith("first")
    assert arrivals[0][0] < 0.8 < result.duration_s


def test_binary_and_invalid_utf8_output_is_replaced_not_fatal(open_sandbox):
    sandbox = open_sandbox()
    result = sandbox.exec(r"printf 'caf\xc3\xa9 \xff\xfe end\n'; head -c 20000 /dev/urandom")
    assert result.exit_code == 0
    assert result.output.startswith("café \ufffd\ufffd end\n")
    assert sandbox.exec("echo still fine").output == "still fine\n"


def test_timeout_kills_the_whole_process_tree(open_sandbox):
    sandbox = open_sandbox()
    command = ("(sleep 2; touch /workspace/from_child) & "
               "setsid sh -c 'sleep 2; touch /workspace/from_new_session' & "
               "sleep 60")
    result = sandbox.exec(command, timeout_s=1)
    assert result.timed_out and result.exit_code is None
    assert result.duration_s < 5
    time.sleep(2.5)
    assert sandbox.exec("ls from_child from_new_session 2>&1 | grep -c 'No such file'").output == "2\n"
    assert "sleep 60" not in sandbox.exec("ps -eo args").output


def test_background_process_does_not_hold_the_command_open(open_sandbox):
    sandbox = open_sandbox()
    result = sandbox.exec("sleep 30 > /dev/null 2>&1 & sleep 30 & echo started", timeout_s=20)
    assert result.output == "started\n" and result.exit_code == 0
    assert result.duration_s < 3


def test_output_flood_is_capped_and_the_server_survives(open_sandbox):
    sandbox = open_sandbox(output_cap_bytes=200_000)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = sandbox.exec("yes 'flood line' | head -c 50000000; echo; echo the-end", timeout_s=60)
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert result.exit_code == 0 and result.truncated
    assert len(result.output.encode()) < 200_000 + 200
    assert result.output.startswith("flood line\n")
    assert result.output.rstrip().endswith("the-end")
    assert "bytes of output elided" in result.output
    assert rss_growth_mb < 100
    assert sandbox.exec("echo alive").output == "alive\n"


def test_fork_bomb_is_contained(open_sandbox):
    sandbox = open_sandbox(pids_limit=128)
    result = sandbox.exec("bomb() { bomb | bomb & }; bomb; sleep 20", timeout_s=4)
    assert result.timed_out
    time.sleep(0.5)
    after = sandbox.exec("echo alive; ps -e --no-headers | wc -l", timeout_s=20)
    assert after.output.startswith("alive\n")
    assert int(after.output.split()[-1]) < 20


def test_memory_hog_is_contained(open_sandbox):
    sandbox = open_sandbox(memory_mb=256)
    hog = sandbox.exec("python3 -c 'b = bytearray(1024 * 1024 * 1024); print(len(b))'", timeout_s=60)
    assert hog.exit_code not in (0, None)
    assert "1073741824" not in hog.output
    assert sandbox.exec("echo alive").output == "alive\n"


def test_concurrent_execs_get_their_own_results(open_sandbox):
    sandbox = open_sandbox()
    results: dict[int, str] = {}

    def run(index: int) -> None:
        results[index] = sandbox.exec(f"sleep 0.5; echo job-{index}").output

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: f"job-{i}\n" for i in range(8)}
    assert time.monotonic() - started < 3


def test_no_host_secrets_and_no_privileges(open_sandbox, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret-value")
    sandbox = open_sandbox()
    result = sandbox.exec("env; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; ls /root 2>&1; id -u")
    assert "sk-host-secret-value" not in result.output
    assert "CapEff:\t0000000000000000" in result.output
    assert "NoNewPrivs:\t1" in result.output
    assert result.output.rstrip().endswith("1000")
    mounts = sandbox.exec("cat /proc/self/mountinfo").output
    # No host directory but (for bubblewrap) the job's own workspace and home: no data dir, no other jobs.
    host_paths = [line for line in mounts.splitlines() if "assistant-test-" in line]
    assert all(any(f"/{p} " in line for p in ("workspaces/job1", "homes/job1", "homes/.job1-etc/passwd", "homes/.job1-etc/group", "homes/.job1-etc/hostname")) for line in host_paths), host_paths


def test_wall_clock_cap_ends_the_sandbox(open_sandbox):
    sandbox = open_sandbox(job_wall_clock_s=2)
    started = time.monotonic()
    try:
        result = sandbox.exec("sleep 30", timeout_s=30)
        assert result.timed_out  # the command's timeout was cut to what was left of the job's time
    except SandboxError as exc:
        assert "wall-clock" in str(exc)  # or the sandbox went away under it
    assert time.monotonic() - started < 5
    time.sleep(0.5)
    with pytest.raises(SandboxError, match="wall-clock"):
        sandbox.exec("echo too late")


def test_interrupt_stops_the_command_under_way_and_the_sandbox_stays(open_sandbox):
    """A steering message sent with `now`: the command's whole tree is killed (the protocol's cancel op), its exec
    returns what it printed, and the next command runs in the same sandbox."""
    sandbox = open_sandbox()
    results = []
    runner = threading.Thread(target=lambda: results.append(
        sandbox.exec("echo started; (sleep 60; touch /workspace/from_child) & sleep 60", timeout_s=120)))
    started = time.monotonic()
    runner.start()
    deadline = time.monotonic() + 10
    told = 0
    while not told and time.monotonic() < deadline:
        time.sleep(0.2)
        told = sandbox.interrupt()
    runner.join(15)
    assert told == 1 and results, "the command was not stopped"
    result = results[0]
    assert result.exit_code is None and not result.timed_out and result.output.startswith("started")
    assert time.monotonic() - started < 10
    assert sandbox.interrupt() == 0  # nothing runs any more
    assert "sleep 60" not in sandbox.exec("ps -eo args").output
    assert sandbox.exec("echo still here").output == "still here\n"
