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
