"""The `assistant` command as a user runs it: a real subprocess, the scripted model over HTTP, a real engine."""
import json
import os
import re
import subprocess
import sys
import time

import pytest

from assistant.domain.events import SteerQueued
from assistant.testing.scripted_model import Reply, by_turn, chunk_ids
from tests.fixtures.repos import FIX_PATCH, make_calc_repo
from tests.jobs.test_asking import fake_sandboxes  # noqa: F401  (a fixture)

AGENT = "You are a careful software engineer"
TEST_CMD = "python3 -m unittest -v 2>&1"


def cli(args, env, timeout=240):
    return subprocess.run([sys.executable, "-m", "assistant.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def cli_env(tmp_path, scripted_model):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSISTANT_", "OPENAI_"))}
    env.update(ASSISTANT_DATA_DIR=str(tmp_path / "data"), OPENAI_BASE_URL=scripted_model.base_url,
               OPENAI_API_KEY="k", ASSISTANT_MODEL="scripted-model", ASSISTANT_SANDBOX_BACKEND="docker",
               ASSISTANT_CONFIG=str(tmp_path / "none.toml"), NO_PROXY="127.0.0.1,localhost")
    return env


@pytest.mark.docker
def test_run_json_then_jobs_commands(tmp_path, docker_engine, scripted_model, cli_env):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [by_turn(
        Reply.call("shell", command=TEST_CMD), Reply.call("apply_patch", patch=FIX_PATCH),
        Reply.call("shell", command=TEST_CMD),
        lambda r: Reply.text(f"Sign fixed 【F:calc.py†L1-L2】; tests pass 【{chunk_ids(r)[2]}†L1-L3】."))],
        repeat_last=True)
    proc = cli(["run", "--repo", str(repo), "--json", "Fix the failing test"], cli_env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("job_id", "status", "summary", "diff", "citations", "setup_network", "agent_network"):
        assert key in out
    assert out["status"] == "succeeded" and all(c["valid"] for c in out["citations"])
    assert "lo" in out["agent_network"]
    assert "running" in proc.stderr and "step 2: apply_patch" in proc.stderr   # live progress on stderr

    job_id = out["job_id"]
    listing = cli(["jobs", "list"], cli_env)
    assert job_id in listing.stdout and "succeeded" in listing.stdout
    show = cli(["jobs", "show", job_id[:5]], cli_env)
    assert "calc.py:L1-2 ✓" in show.stdout
    logs = cli(["jobs", "logs", job_id], cli_env)
    assert "apply_patch" in logs.stdout
    chunk = out["citations"][1]["target"]
    one = cli(["jobs", "logs", job_id, "--chunk", chunk], cli_env)
    assert "    1 | test_add" in one.stdout
    diff = cli(["jobs", "diff", job_id], cli_env)
    assert "+    return a + b" in diff.stdout
    cancel = cli(["jobs", "cancel", job_id], cli_env)
    assert cancel.returncode == 1 and "already ended" in cancel.stdout


@pytest.mark.docker
def test_run_exits_non_zero_when_the_job_fails(tmp_path, docker_engine, scripted_model, cli_env):
    repo = make_calc_repo(tmp_path / "calc")
    proc = cli(["run", "--repo", str(repo), "--setup", "exit 7", "Fix it"], cli_env)
    assert proc.returncode == 1
    assert "failed" in proc.stdout and "exit" in proc.stdout


def test_bad_setting_fails_at_start_naming_the_variable(cli_env):
    proc = cli(["jobs", "list"], {**cli_env, "ASSISTANT_MAX_CONCURRENT_JOBS": "many"})
    assert proc.returncode == 2 and "ASSISTANT_MAX_CONCURRENT_JOBS='many'" in proc.stderr


def test_doctor_without_a_docker_engine(cli_env, tmp_path):
    env = {**cli_env, "DOCKER_HOST": f"unix://{tmp_path}/no-such-docker.sock", "ASSISTANT_SANDBOX_BACKEND": "auto"}
    proc = cli(["doctor"], env)
    assert "[NO ] docker engine" in proc.stdout or "[-- ] docker engine" in proc.stdout
    assert "fix: ./run.sh" in proc.stdout
    assert "sandbox backend: local" in proc.stdout           # it says which backend it falls back to
    assert proc.stdout.count("Error while fetching server API version") <= 1   # the engine's long error, said once
    assert "[ok ] model endpoint" in proc.stdout and "[ok ] database" in proc.stdout
    assert proc.returncode == 0                               # usable: jobs run on bubblewrap
    forced = cli(["doctor"], {**env, "ASSISTANT_SANDBOX_BACKEND": "docker"})
    assert forced.returncode == 1 and "[NO ] sandbox backend: docker" in forced.stdout


@pytest.mark.docker
def test_doctor_with_a_docker_engine(cli_env, docker_engine):
    proc = cli(["doctor"], cli_env)
    assert proc.returncode == 0, proc.stdout
    assert "[ok ] docker engine" in proc.stdout and "[ok ] sandbox image" in proc.stdout
    assert "sandbox backend: docker" in proc.stdout


def test_doctor_says_when_the_model_endpoint_is_down(cli_env):
    proc = cli(["doctor"], {**cli_env, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert proc.returncode == 1
    assert "[NO ] model endpoint" in proc.stdout and "OPENAI_BASE_URL" in proc.stdout
    assert "fix: start the model server at http://127.0.0.1:9/v1, or set OPENAI_BASE_URL" in proc.stdout
    assert "assistant doctor" not in proc.stdout          # no hint sends the user back to the command they ran


@pytest.mark.docker
def test_kill_9_of_a_run_leaves_no_container_and_the_job_reads_interrupted(tmp_path, docker_engine, scripted_model,
                                                                         cli_env):
    """The command server exits when its driver's connection drops (however the driver died), taking its
    commands with it, and the container stops; the next look at the jobs marks the job interrupted."""
    import time

    import docker

    from assistant.procs import boot_id

    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains(AGENT, [Reply.call("shell", command="sleep 300")], repeat_last=True)
    runner = subprocess.Popen([sys.executable, "-m", "assistant.cli", "run", "--repo", str(repo), "Hang"],
                              env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = docker.from_env()
    try:
        deadline = time.monotonic() + 60
        container = None
        owner = f"assistant.owner={boot_id()}:{runner.pid}"
        while time.monotonic() < deadline and container is None:
            for candidate in client.containers.list(ignore_removed=True, filters={"label": owner}):
                try:
                    top = candidate.top(ps_args="-eo pid,args").get("Processes") or []
                except docker.errors.APIError:
                    continue  # still starting
                if any("sleep 300" in " ".join(row) for row in top):
                    container = candidate
            time.sleep(0.2)
        assert container is not None, "the job's command never started"
    finally:
        runner.kill()
        runner.wait()
    killed_at = time.monotonic()
    while time.monotonic() - killed_at < 15:
        container.reload()
        if container.status != "running":
            break
        time.sleep(0.2)
    assert container.status != "running", "the job's container outlived its driver by 15 s"
    listed = cli(["jobs", "list"], cli_env)
    assert "interrupted" in listed.stdout, listed.stdout
    container.remove(force=True)


def test_gc_dry_run_says_what_it_would_remove_then_gc_removes_it(cli_env, tmp_path):
    data = tmp_path / "data"
    leftover = data / "workspaces" / "0ldj0b01"
    leftover.mkdir(parents=True)
    (leftover / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    old = time.time() - 10 * 86_400
    for path in (leftover / "big.bin", leftover):
        os.utime(path, (old, old))

    dry = cli(["gc", "--dry-run"], cli_env)
    assert dry.returncode == 0, dry.stderr
    assert re.search(r"would remove\s+job files\s+3\.0 MB\s+" + re.escape(str(leftover)), dry.stdout), dry.stdout
    assert "unused for 10.0 days (limit 3)" in dry.stdout and "nothing was deleted" in dry.stdout
    assert leftover.is_dir()

    real = cli(["gc"], cli_env)
    assert re.search(r"removed\s+job files\s+3\.0 MB", real.stdout) and "removed 1 items, 3.0 MB" in real.stdout
    assert not leftover.exists()


def test_doctor_reports_disk_use(cli_env, tmp_path):
    (tmp_path / "data" / "checkouts" / "abc").mkdir(parents=True)
    (tmp_path / "data" / "checkouts" / "abc" / "f").write_bytes(b"x" * 2 * 1024 * 1024)
    proc = cli(["doctor"], {**cli_env, "ASSISTANT_CHECKOUTS_MAX_MB": "1"})
    line = next(line for line in proc.stdout.splitlines() if "disk use" in line)
    assert line.startswith("[-- ] disk use") and "checkouts 2.0 MB" in line and "checkouts over its 1.0 MB limit" in line
    assert "fix: assistant gc" in proc.stdout


def test_gc_and_doctor_show_repository_mirrors(cli_env, tmp_path):
    from assistant.sandbox.repo import mirror_lock_path, prepare_source
    repo = make_calc_repo(tmp_path / "calc")
    mirror = prepare_source(str(repo), None, tmp_path / "data").mirror
    old = time.time() - 40 * 86_400
    for path in [mirror_lock_path(mirror), *mirror.rglob("*"), mirror]:
        os.utime(path, (old, old))

    doctor = cli(["doctor"], cli_env)
    assert re.search(r"disk use: .*, mirrors \d", doctor.stdout), doctor.stdout
    dry = cli(["gc", "--dry-run"], cli_env)
    assert re.search(r"would remove\s+mirrors\s+.*" + re.escape(f"{mirror} ({repo.resolve()})"), dry.stdout), dry.stdout
    assert re.search(r"^mirrors:\s+1 items, .* \(limits: 30 days, 4096 MB\)$", dry.stdout, re.M), dry.stdout
    real = cli(["gc"], cli_env)
    assert re.search(r"removed\s+mirrors\s+", real.stdout) and not mirror.exists(), real.stdout


@pytest.mark.docker
def test_a_cancel_from_another_process_stops_the_running_job(tmp_path, docker_engine, scripted_model, cli_env,
                                                               assistant_for):
    from assistant.jobs.manager import JobRequest
    from assistant.sandbox.engine import JOB_LABEL, docker_client
    scripted_model.when_system_contains(AGENT, [Reply.call("shell", command="sleep 300")], repeat_last=True)
    a = assistant_for(scripted_model, ASSISTANT_DATA_DIR=cli_env["ASSISTANT_DATA_DIR"])
    job = a.jobs.submit(JobRequest(task="wait", repo=str(make_calc_repo(tmp_path / "calc")), setup=[]))[0]
    deadline = time.monotonic() + 60
    while a.store.get_job(job.id).state != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cli(["jobs", "cancel", job.id], cli_env).returncode == 0
    started = time.monotonic()
    final = a.jobs.wait(job.id, timeout=20)
    assert final.state == "cancelled" and time.monotonic() - started < 5

    def containers():
        return docker_client().containers.list(ignore_removed=True, all=True, filters={"label": f"{JOB_LABEL}={job.id}"})
    deadline = time.monotonic() + 10  # the worker removes the container as it winds down
    while containers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert containers() == []


def test_jobs_show_prints_a_notification_line_per_url(cli_env, tmp_path):
    from datetime import datetime, timezone

    from assistant.store import Store
    store = Store(f"sqlite:///{tmp_path / 'data' / 'assistant.db'}")
    job = store.create_job(task="Fix it", repo="/src/calc", title="Fix it", runner="none:0")
    store.transition(job.id, "cancelled", "cancelled by the user")
    good, bad = store.add_notifications(job.id, "ended", ["https://hooks.example.org/services/T0/KEY",
                                                          "http://127.0.0.1:9/hook"], {"event": "ended"})
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    for row_id in (good, bad):
        assert store.claim_notification(row_id, "test", now)
    store.end_notification_attempt(good, state="delivered", now=now, status=200)
    store.end_notification_attempt(bad, state="failed", now=now, error="could not connect: [Errno 111] Connection refused")
    store.close()
    proc = cli(["jobs", "show", job.id], cli_env)
    assert proc.returncode == 0, proc.stderr
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("notification:")]
    assert lines == ["notification: ended → https://hooks.example.org/services/…: delivered at 2025-01-02 03:04:05 UTC "
                     "after 1 attempt",
                     "notification: ended → http://127.0.0.1:9/hook: failed after 1 attempt; last error: could not "
                     "connect: [Errno 111] Connection refused"]
    assert "KEY" not in proc.stdout


def _store(cli_env):
    from assistant.store import Store
    return Store(f"sqlite:///{cli_env['ASSISTANT_DATA_DIR']}/assistant.db")


def _two_conversations(cli_env):
    """Two conversations with jobs numbered as the web app numbers them, and one job of `assistant run`."""
    os.makedirs(cli_env["ASSISTANT_DATA_DIR"], exist_ok=True)
    store = _store(cli_env)
    try:
        calc = store.create_thread(user_id=None, name="Fix the calc", repo="/r")
        docs = store.create_thread(user_id=None, name="Add docs", repo="/r")
        jobs = {
            "calc1": store.create_job(task="fix add", repo="/r", thread_id=calc.id, title="Fix add", id="a1b2c3d4"),
            "calc2": store.create_job(task="fix sub", repo="/r", thread_id=calc.id, title="Fix sub", id="e5f6a7b8"),
            "docs1": store.create_job(task="docs", repo="/r", thread_id=docs.id, title="Write docs", id="2c0ffee0"),
            "run": store.create_job(task="from run", repo="/r", title="From run", id="d00dfeed"),
        }
        chunk = store.add_chunk(job_id="e5f6a7b8", command="python3 -m unittest", exit_code=0,
                                text="\n".join(f"line {i}" for i in range(20_000)))
        return calc, docs, jobs, chunk
    finally:
        store.close()


def test_jobs_list_shows_the_numbers_the_web_app_shows(cli_env):
    calc, docs, _jobs, _chunk = _two_conversations(cli_env)
    listing = cli(["jobs", "list"], cli_env)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in listing.stdout.splitlines()[1:]}
    assert rows == {"a1b2c3d4": ["1", calc.id[:8]], "e5f6a7b8": ["2", calc.id[:8]],
                    "2c0ffee0": ["1", docs.id[:8]], "d00dfeed": ["-", "-"]}
    only = cli(["jobs", "list", "--thread", "add docs"], cli_env)
    assert [line.split()[0] for line in only.stdout.splitlines()[1:]] == ["2c0ffee0"]


def test_jobs_commands_take_the_job_number(cli_env):
    calc, docs, _jobs, chunk = _two_conversations(cli_env)
    show = cli(["jobs", "show", "2"], cli_env)      # job 2 of the calc conversation, and the start of id 2c0ffee0:
    assert show.returncode == 2 and "'2' could mean 2 jobs" in show.stderr   # refused, both named
    assert "e5f6a7b8  job 2 of conversation" in show.stderr and "2c0ffee0  job 1 of conversation" in show.stderr
    assert f"assistant jobs show 2 --thread {calc.id[:8]}" in show.stderr
    show = cli(["jobs", "show", "2", "--thread", calc.id[:8]], cli_env)
    assert show.returncode == 0, show.stderr
    assert re.search(r"^\s+id: e5f6a7b8$", show.stdout, re.M)
    assert f"job: 2 of conversation {calc.id[:8]} “Fix the calc”" in show.stdout
    one = cli(["jobs", "show", "1"], cli_env)       # job 1 of two conversations: refused, both listed
    assert one.returncode == 2 and "a1b2c3d4" in one.stderr and "2c0ffee0" in one.stderr and not one.stdout
    by_name = cli(["jobs", "logs", "1", "--thread", "Add docs"], cli_env)
    assert by_name.returncode == 0 and by_name.stdout == ""          # the docs job has no logs; it was found
    logs = cli(["jobs", "logs", "2", "--thread", "Fix the calc"], cli_env)
    assert logs.stdout.startswith(f"{chunk.id}  agent exit    0  20000 lines")
    cancel = cli(["jobs", "cancel", "1", "--thread", docs.id], cli_env)
    assert cancel.returncode == 0 and cancel.stdout == "job 1 (id 2c0ffee0) cancelled\n", cancel.stderr
    store = _store(cli_env)
    try:
        assert store.get_job("2c0ffee0").state == "cancelled" and store.get_job("a1b2c3d4").state == "queued"
    finally:
        store.close()
    assert re.search(r"^\s+id: d00dfeed$", cli(["jobs", "show", "d00d"], cli_env).stdout, re.M)   # id prefixes
    assert re.search(r"^\s+id: a1b2c3d4$", cli(["jobs", "show", "a1b2c3d4"], cli_env).stdout, re.M)
    missing = cli(["jobs", "show", "7"], cli_env)
    assert missing.returncode == 2 and "no job '7'" in missing.stderr and "Traceback" not in missing.stderr
    nothread = cli(["jobs", "show", "1", "--thread", "nope"], cli_env)
    assert nothread.returncode == 2 and "no conversation 'nope'" in nothread.stderr


@pytest.mark.parametrize("command", [["jobs", "logs", "e5f6", "--chunk", "{chunk}"], ["jobs", "list"],
                                     ["doctor"]])
def test_output_into_a_closed_pipe_ends_quietly(cli_env, command):
    _calc, _docs, _jobs, chunk = _two_conversations(cli_env)
    args = " ".join(part.format(chunk=chunk.id) for part in command)
    # `head -c 0` exits at once without reading: every write of the command meets a closed pipe.
    proc = subprocess.run(["bash", "-c", f"'{sys.executable}' -m assistant.cli {args} | head -c 0; "
                                         "echo \"status ${PIPESTATUS[0]}\" >&2"],
                          env={**cli_env, "ASSISTANT_SANDBOX_BACKEND": "auto"}, capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().endswith("status 141"), proc.stderr


def test_ask_renders_citations_as_run_does(tmp_path, scripted_model, cli_env):
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains("You answer questions about a codebase", [by_turn(
        Reply.call("read_file", path="calc.py", start=1, end=2),
        Reply.text("`add` returns `a - b` 【F:calc.py†L1-L2】; not in 【F:calc.py†L40-L41】."))], repeat_last=True)
    proc = cli(["ask", "--repo", str(repo), "What does add do?"], {**cli_env, "ASSISTANT_SANDBOX_BACKEND": "local"})
    assert proc.returncode == 0, proc.stderr
    assert "【" not in proc.stdout and "†" not in proc.stdout, proc.stdout
    assert "`add` returns `a - b` [calc.py:L1-2 ✓]; not in [calc.py:L40-41 ✗ calc.py has " in proc.stdout


def test_ask_on_a_terminal_streams_the_reply_then_checks_its_citations(tmp_path, scripted_model, cli_env):
    import pty
    repo = make_calc_repo(tmp_path / "calc")
    scripted_model.when_system_contains("You answer questions about a codebase", [by_turn(
        Reply.call("read_file", path="calc.py", start=1, end=2),
        Reply.text("`add` returns `a - b` 【F:calc.py†L1-L2】; not in 【F:calc.py†L40-L41】."))], repeat_last=True)
    main, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "assistant.cli", "ask", "--repo", str(repo), "What does add do?"],
                            env={**cli_env, "ASSISTANT_SANDBOX_BACKEND": "local"}, stdout=terminal,
                            stderr=subprocess.PIPE, text=True)
    os.close(terminal)
    shown = b""
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:  # the command ended and closed the terminal
            break
        if not data:
            break
        shown += data
    os.close(main)
    assert proc.wait(timeout=240) == 0, proc.stderr.read()
    lines = shown.decode().replace("\r\n", "\n").splitlines()
    assert "`add` returns `a - b` [calc.py:L1-2]; not in [calc.py:L40-41]." in lines, lines
    assert any(line.startswith("citations: [calc.py:L1-2 ✓] · [calc.py:L40-41 ✗ calc.py has ") for line in lines), lines


def test_jobs_tell_stores_a_message_for_a_running_job_and_show_lists_its_receipt(cli_env):
    calc, _docs, jobs, _chunk = _two_conversations(cli_env)   # jobs of this (live) process: not orphaned
    store = _store(cli_env)
    try:
        store.transition("e5f6a7b8", "preparing")
        store.transition("e5f6a7b8", "running")
    finally:
        store.close()
    told = cli(["jobs", "tell", "2", "Use the v2 API.", "--now", "--thread", calc.id[:8]], cli_env)
    assert told.returncode == 0, told.stderr
    assert told.stdout.startswith("told job 2 (id e5f6a7b8) (running); its agent reads it now")
    store = _store(cli_env)
    try:
        [row] = store.list_steer_messages("e5f6a7b8")
        assert (row.text, row.now, row.state) == ("Use the v2 API.", True, "queued")
        assert [e for e in store.read_events("e5f6a7b8") if e.kind == "steer_queued"] == [
            SteerQueued(row.id, "Use the v2 API.", True)]
        store.mark_steer_delivered([row.id], step=3, how="turn", stopped="sleep 60")
        store.mark_steer_acknowledged([row.id], "shell: $ grep -rn v2 .")
    finally:
        store.close()
    show = cli(["jobs", "show", "e5f6a7b8"], cli_env)
    [line] = [line.strip() for line in show.stdout.splitlines() if line.strip().startswith("steering:")]
    assert line.endswith("[now] “Use the v2 API.”: delivered at step 3 as a user turn, stopping `sleep 60`; "
                         "acknowledged: “shell: $ grep -rn v2 .”"), line
    missing = cli(["jobs", "tell", "e5f6a7b8"], cli_env)
    assert missing.returncode == 2 and "needs the message" in missing.stderr
    cli(["jobs", "cancel", "e5f6a7b8"], cli_env)
    ended = cli(["jobs", "tell", "e5f6a7b8", "one more thing"], cli_env)
    assert ended.returncode == 1 and "already ended (cancelled)" in ended.stderr and "follow-up" in ended.stderr


def test_jobs_tell_answers_a_waiting_job_and_show_prints_its_question(tmp_path, scripted_model, cli_env,
                                                                      settings_for, fake_sandboxes):
    """A job of this process (the fake sandbox, no Docker) waits for an answer; `jobs show` in another process
    prints the question, `jobs tell` there answers it, and the agent goes on with it as its tool result."""
    from assistant.jobs.manager import JobManager, JobRequest
    from assistant.llm.client import ModelClient
    from assistant.store import Store
    from tests.jobs.test_asking import ANSWER, QUESTION, asking_script, wait_for

    asking_script(scripted_model)
    settings = settings_for(scripted_model, ASSISTANT_DATA_DIR=cli_env["ASSISTANT_DATA_DIR"])
    store = Store(settings.resolved_database_url)
    manager = JobManager(settings, store, ModelClient(settings))
    try:
        job = manager.submit(JobRequest(task="Fix the API use", repo=str(make_calc_repo(tmp_path / "calc")),
                                        setup=[]))[0]
        wait_for(lambda: store.get_job(job.id).state == "waiting", "the job waits")
        listing = cli(["jobs", "list"], cli_env)
        assert re.search(rf"{job.id}\s+-\s+-\s+waiting ", listing.stdout), listing.stdout
        show = cli(["jobs", "show", job.id], cli_env)
        assert show.returncode == 0, show.stderr
        assert f"question: {QUESTION}" in show.stdout and "choices: keep v1 | move to v2" in show.stdout
        assert f'answer with: assistant jobs tell {job.id} "…"' in show.stdout
        told = cli(["jobs", "tell", job.id, ANSWER], cli_env)
        assert told.returncode == 0, told.stderr
        assert told.stdout.startswith(f"answered job {job.id}'s question; its agent goes on with your answer")
        job = manager.wait(job.id, timeout=60)
        assert job.state == "succeeded", job.reason
        assert [c.command for c in store.list_chunks(job.id)] == ["echo looked", "echo v2"]
        show = cli(["jobs", "show", job.id], cli_env)
        assert "question:" not in show.stdout
        assert f"“{ANSWER}”: delivered at step 2 as the answer to its question; acknowledged" in show.stdout
    finally:
        manager.shutdown(wait_s=10)
        store.close()


def test_jobs_cancel_without_the_queue_sends_the_webhook(cli_env, tmp_path):
    from assistant.notify import verify
    from assistant.store import Store
    from tests.notify.receiver import Receiver

    os.makedirs(cli_env["ASSISTANT_DATA_DIR"], exist_ok=True)
    store = Store(f"sqlite:///{cli_env['ASSISTANT_DATA_DIR']}/assistant.db")
    try:
        job = store.create_job(task="Fix it", repo="/src/calc", title="Fix it")   # of this (live) process
        store.transition(job.id, "preparing")
    finally:
        store.close()
    with Receiver() as receiver:
        env = {**cli_env, "ASSISTANT_WEBHOOK_URLS": receiver.url, "ASSISTANT_WEBHOOK_SECRET": "cli-secret"}
        proc = cli(["jobs", "cancel", job.id], env)
        assert proc.returncode == 0 and proc.stdout == f"job {job.id} cancelled\n", proc.stderr
        [got] = receiver.wait_for(1, timeout=30)
    assert got.headers["X-Assistant-Event"] == "ended" and got.json["state"] == "cancelled"
    assert verify("cli-secret", got.body, got.headers["X-Assistant-Timestamp"], got.headers["X-Assistant-Signature"])
    store = Store(f"sqlite:///{cli_env['ASSISTANT_DATA_DIR']}/assistant.db")
    try:
        assert store.get_job(job.id).state == "cancelled"
        assert [r.state for r in store.list_notifications(job.id)] == ["delivered"]
    finally:
        store.close()

def test_review_json_prints_the_verdict_findings_and_proof_patches(tmp_path, scripted_model, cli_env,
                                                                   reachable_data_dir):
    """`assistant review --json` on a branch with an off-by-one, on the bubblewrap backend (no engine needed)."""
    from tests.fixtures.chunks import CHUNKS_BUGGY, REVIEWER, bug_findings, make_chunks_repo, reviewer
    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_BUGGY)
    scripted_model.when_system_contains(REVIEWER, [reviewer(bug_findings)], repeat_last=True)
    env = {**cli_env, "ASSISTANT_SANDBOX_BACKEND": "local", "ASSISTANT_DATA_DIR": str(reachable_data_dir)}
    proc = cli(["review", "--repo", str(repo), "--base", "main", "--head", "feature", "--setup", "true", "--json"],
               env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "succeeded" and out["verdict"] == "changes_requested"
    blocker, invented, nit = out["findings"]
    assert (blocker["severity"], blocker["verified"]) == ("blocker", True)
    assert blocker["proof"]["head"]["exit_code"] != 0 and blocker["proof"]["base"]["exit_code"] == 0
    assert len(blocker["proof"]["head"]["chunk_id"]) == 6 and blocker["proof"]["status"] == "confirmed"
    assert [c["valid"] for c in blocker["citations"]] == [True, True]
    assert (invented["verified"], invented["proof"], [c["valid"] for c in invented["citations"]]) == (False, None, [False])
    assert nit["verified"] is False and nit["proof"]["status"] == "passes_on_head"
    (proof,) = out["proof_patches"]
    assert proof["finding"] == "f1" and "+++ b/test_review_proof.py" in proof["patch"]
    assert all("valid" in c for c in out["citations"]) and out["summary"].startswith("**Review: changes requested**")
    assert out["reviewer_summary"] == "Reviewed."
    assert "review: proof of f1 on the head" in proc.stderr   # live progress on stderr
    # The chunk a proof ran in is the job's log: `jobs logs --chunk` shows it.
    logs = cli(["jobs", "logs", out["job_id"], "--chunk", blocker["proof"]["head"]["chunk_id"]], env)
    assert "FAIL" in logs.stdout


def test_review_says_what_to_give(tmp_path, cli_env):
    from tests.fixtures.chunks import CHUNKS_BUGGY, make_chunks_repo
    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_BUGGY)
    missing = cli(["review", "--repo", str(repo), "--patch", str(tmp_path / "nope.diff")], cli_env)
    assert missing.returncode == 2 and "give a patch file" in missing.stderr
    same = cli(["review", "--repo", str(repo), "--base", "feature", "--head", "feature"], cli_env)
    assert same.returncode == 2 and "no change to review" in same.stderr
    unknown = cli(["review", "--repo", str(repo), "--head", "no-such-branch"], cli_env)
    assert unknown.returncode == 2 and "does not exist" in unknown.stderr


def test_review_fix_runs_the_follow_up_of_a_finding(tmp_path, scripted_model, cli_env, reachable_data_dir):
    from tests.fixtures.chunks import (AGENT_FIX, CHUNKS_BUGGY, PROOF_CMD, REVIEWER, bug_findings, make_chunks_repo,
                                       reviewer)
    repo = make_chunks_repo(tmp_path / "chunks", CHUNKS_BUGGY)
    scripted_model.when_system_contains(REVIEWER, [reviewer(bug_findings)], repeat_last=True)
    scripted_model.when_system_contains(AGENT, [AGENT_FIX], repeat_last=True)
    env = {**cli_env, "ASSISTANT_SANDBOX_BACKEND": "local", "ASSISTANT_DATA_DIR": str(reachable_data_dir)}
    review = json.loads(cli(["review", "--repo", str(repo), "--base", "main", "--head", "feature", "--setup", "true",
                             "--json"], env, timeout=600).stdout)
    wrong = cli(["review", "--job", review["job_id"], "--fix", "f9"], env)
    assert wrong.returncode == 2 and "no finding 'f9'" in wrong.stderr
    proc = cli(["review", "--job", review["job_id"][:6], "--fix", "f1", "--json"], env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "succeeded" and out["title"].startswith("Fix: chunked drops")
    assert "+++ b/test_review_proof.py" in out["patch"] and "range(0, len(items), size)" in out["patch"]
    logs = cli(["jobs", "logs", out["job_id"]], env)
    assert PROOF_CMD[:40] in logs.stdout


def test_jobs_show_prints_the_self_review_and_its_json_carries_it(cli_env):
    from assistant.domain.review import SELF_REVIEW_ARTIFACT, SelfReview
    from tests.web.review_fixture import result

    _calc, _docs, jobs, _chunk = _two_conversations(cli_env)
    store = _store(cli_env)
    try:
        store.put_artifact(jobs["calc1"].id, SELF_REVIEW_ARTIFACT,
                           json.dumps(SelfReview("done", seconds=12.0, result=result()).as_dict()))
        store.put_artifact(jobs["calc2"].id, SELF_REVIEW_ARTIFACT,
                           json.dumps(SelfReview("incomplete", reason="the reviewer gave no usable report").as_dict()))
    finally:
        store.close()
    proc = cli(["jobs", "show", jobs["calc1"].id], cli_env)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "self-review" in line or line.startswith("  f")]
    assert lines[0] == "self-review: changes requested — 4 findings, 1 verified (12 s)"
    assert lines[1].startswith("  f1 [blocker] chunked drops the last item of an odd-length list — ✔ verified: its "
                               "proof `") and "fails on the head 【aaa111†L1-L" in lines[1]
    assert lines[2] == "  f2 [major] chunked is slow on huge lists — ⚠ unverified: no proof was given"
    shown = json.loads(cli(["jobs", "show", jobs["calc1"].id, "--json"], cli_env).stdout)
    assert shown["job_id"] == jobs["calc1"].id and shown["self_review"]["status"] == "done"
    assert sorted((f["id"], f["severity"], f["verified"]) for f in shown["self_review"]["result"]["findings"]) == [
        ("f1", "blocker", True), ("f2", "major", False), ("f3", "nit", False), ("f4", "minor", False)]
    other = cli(["jobs", "show", jobs["calc2"].id], cli_env).stdout
    assert "self-review: did not complete — the reviewer gave no usable report" in other
    assert json.loads(cli(["jobs", "show", jobs["docs1"].id, "--json"], cli_env).stdout)["self_review"] is None
