"""Ranking a best-of-N group when its last attempt ends: what is recommended, and what the group says."""
from __future__ import annotations

from assistant.domain.events import GroupRanked
from assistant.jobs.recorder import rank_group_if_complete
from assistant.web.cards import render_job_card


def group(store, *attempts):
    """Jobs of one group: (state, kind, diff lines) per attempt."""
    return [store.create_job(task="Fix the add function", repo="/r", thread_id="t1", group_id="g1", attempt=n,
                             attempts=len(attempts), state=state,
                             outcome={"kind": kind, "diff_lines": lines, "tests_passed": None})
            for n, (state, kind, lines) in enumerate(attempts, start=1)]


def ranked(store):
    updates = []
    rank_group_if_complete(store, "g1", updates.append)
    jobs = sorted(store.list_jobs(group_id="g1"), key=lambda j: (j.outcome.get("rank") or 0, j.attempt))
    return jobs, [u.event for u in updates if isinstance(u.event, GroupRanked)]


def test_when_no_attempt_produced_anything_none_is_recommended_and_the_group_says_so(store):
    group(store, ("succeeded", "no result", 0), ("succeeded", "no result", 0), ("succeeded", "no result", 0))
    jobs, events = ranked(store)
    assert [j.outcome["rank"] for j in jobs] == [1, 2, 3]
    assert not any(j.outcome["recommended"] for j in jobs)
    assert len(events) == 1 and events[0].recommended is None
    assert events[0].note == "No attempt produced a change: none of the 3 attempts is recommended."
    card = render_job_card(store, jobs[0].id)
    assert "Rank 1 of 3 — none of the attempts is recommended" in card and "**recommended**" not in card
    assert "No attempt produced a change" in card


def test_attempts_with_no_result_rank_below_any_attempt_with_one(store):
    empty, draft, findings = group(store, ("succeeded", "no result", 0), ("failed", "draft", 12),
                                   ("succeeded", "findings", None))
    jobs, events = ranked(store)
    assert [j.id for j in jobs] == [draft.id, findings.id, empty.id]
    # the best-ranked attempt failed: the recommendation goes to none rather than to a failure or an empty one
    assert not any(j.outcome["recommended"] for j in jobs) and events[0].recommended is None
    assert events[0].note == ("The best-ranked attempt (2) failed: none of the 3 attempts is recommended; "
                              "review them before using one.")


def test_the_best_attempt_with_a_result_is_recommended(store):
    empty, fix = group(store, ("succeeded", "no result", 0), ("succeeded", "fix", 4))
    jobs, events = ranked(store)
    assert [(j.id, j.outcome["recommended"]) for j in jobs] == [(fix.id, True), (empty.id, False)]
    assert events[0].recommended == fix.id and events[0].note == "Attempt 2 of 2 is recommended (fix)."
    assert "Rank 1 of 2 — **recommended**" in render_job_card(store, fix.id)


def test_a_group_is_ranked_only_when_its_last_attempt_has_ended(store):
    group(store, ("succeeded", "fix", 4), ("running", None, None))
    jobs, events = ranked(store)
    assert events == [] and not any("rank" in j.outcome for j in jobs)


def test_the_step_under_way_when_a_job_is_cancelled_stays_on_the_record(store):
    from assistant.domain import states
    from assistant.domain.events import StepStopped, ToolStarted
    from assistant.jobs.recorder import JobRecorder

    job = store.create_job(task="Slowly count", repo="/r", thread_id="t1", state=states.RUNNING)
    updates = []
    recorder = JobRecorder(store, job, updates.append)
    recorder.emit(ToolStarted(1, "shell", {"command": "sleep 300"}))
    store.transition(job.id, states.CANCELLED, "cancelled by the user")  # the user's cancel, from elsewhere
    assert recorder.finish(states.CANCELLED, "cancelled by the user") is False
    stopped = [e for e in store.read_events(job.id) if isinstance(e, StepStopped)]
    assert stopped == [StepStopped(1, "shell", "$ sleep 300", states.CANCELLED)]
    assert any(isinstance(u.event, StepStopped) for u in updates)
    assert "■ step 1: `$ sleep 300` — stopped by the cancel" in render_job_card(store, job.id)


def test_a_finished_step_leaves_nothing_open(store):
    from assistant.domain import states
    from assistant.domain.events import StepFinished, StepStopped, ToolStarted
    from assistant.jobs.recorder import JobRecorder

    job = store.create_job(task="t", repo="/r", thread_id="t1", state=states.RUNNING)
    recorder = JobRecorder(store, job, lambda _u: None)
    recorder.emit(ToolStarted(1, "shell", {"command": "ls"}))
    recorder.emit(StepFinished(1, "shell", "$ ls", exit_code=0))
    recorder.finish(states.FAILED, "boom")
    assert not [e for e in store.read_events(job.id) if isinstance(e, StepStopped)]


def test_a_cancel_puts_the_step_under_way_on_the_record_at_once(store):
    """The run ends only once its sandbox is torn down (tens of seconds on a busy engine); the cancelled card
    must show the step it was on from the moment of the cancel, and the killed command adds no second line."""
    from assistant.domain import states
    from assistant.domain.events import StepFinished, StepStopped, ToolStarted
    from assistant.jobs.pipeline import RunControl
    from assistant.jobs.recorder import JobRecorder

    job = store.create_job(task="Slowly count", repo="/r", thread_id="t1", state=states.RUNNING)
    updates, control = [], RunControl()
    recorder = JobRecorder(store, job, updates.append, control)
    recorder.emit(ToolStarted(1, "shell", {"command": "sleep 300"}))
    store.transition(job.id, states.CANCELLED, "cancelled by the user")  # the manager records the end first
    control.cancel()                                                      # then tells the run
    assert [e for e in store.read_events(job.id) if isinstance(e, StepStopped)] == [
        StepStopped(1, "shell", "$ sleep 300", states.CANCELLED)]
    recorder.emit(StepFinished(1, "shell", "$ sleep 300", exit_code=137))  # the killed command, seconds later
    assert recorder.finish(states.CANCELLED, "cancelled by the user") is False
    events = store.read_events(job.id)
    assert len([e for e in events if isinstance(e, StepStopped)]) == 1
    assert not [e for e in events if isinstance(e, StepFinished)]


def test_a_run_lost_or_stopped_by_shutdown_records_no_stop_at_cancel_time(store):
    from assistant.domain import states
    from assistant.domain.events import StepStopped, ToolStarted
    from assistant.jobs.pipeline import RunControl
    from assistant.jobs.recorder import JobRecorder

    job = store.create_job(task="t", repo="/r", thread_id="t1", state=states.RUNNING)
    control = RunControl()
    recorder = JobRecorder(store, job, lambda _u: None, control)
    recorder.emit(ToolStarted(1, "shell", {"command": "sleep 300"}))
    control.cancel()  # a shutdown: the job has not ended yet, its run's end says how (interrupted)
    assert not [e for e in store.read_events(job.id) if isinstance(e, StepStopped)]
    lost = RunControl()
    JobRecorder(store, job, lambda _u: None, lost).emit(ToolStarted(2, "shell", {"command": "ls"}))
    store.transition(job.id, states.CANCELLED, "cancelled by the user")
    lost.lose("another run owns it")
    assert not [e for e in store.read_events(job.id) if isinstance(e, StepStopped)]
