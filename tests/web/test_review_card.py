"""A review job's card as Markdown and buttons, from a stored ReviewResult: the verdict first, findings grouped by
severity, verified ones marked as checked facts and every other one as the reviewer's claim (with why), checked
excerpts only, each proof with its runs on head and base, the proof tests offered, and Fix this / Fix all blockers."""
from __future__ import annotations

import json

import pytest

from assistant.domain import states
from assistant.domain.review import REVIEW_ARTIFACT
from assistant.jobs.review import REVIEW_REQUEST, ReviewRequest
from assistant.web.cards import render_job_card
from assistant.web.review_card import (MAX_FIX_BUTTONS, finding_section, proof_patch_of, render_review,
                                       review_buttons, verdict_section)

from .review_fixture import HEAD_LOG, PROOF_PATCH, blocker, result


def links(kind, target, start, end):
    return f"/cite/J/{target}?L={start}-{end}"


def chunks(chunk_id):
    return HEAD_LOG if chunk_id == "aaa111" else None


def card(review=None, describe="Review of feature against main"):
    return render_review("J", review or result(), links, chunks, describe)


def test_the_verdict_comes_first_with_what_it_rests_on():
    md = card()
    assert md.startswith("## Verdict: ✗ Changes requested\n\n*a blocker or major finding is verified by a proof")
    assert "**4 findings** (1 blocker, 1 major, 1 minor, 1 nit) · **1 verified**" in md
    assert "*Review of feature against main · base `111111111111` → head `222222222222`*" in md
    assert "The reviewer's own verdict agrees." in md
    assert verdict_section(result("approve")).startswith("## Verdict: ✓ Approve")
    comment = verdict_section(result("comment"))
    assert comment.startswith("## Verdict: ◇ Comment") and "none is verified: they are no grounds to block" in comment
    assert "The reviewer said changes requested; the verdict above is the product's" in comment


def test_under_the_verdict_each_finding_is_listed_with_its_mark():
    md = card()
    head = md.split("### Blockers")[0]
    assert head.index("The reviewer's own verdict agrees.") < head.index("- ✔ **f1") < head.index("Tests `")
    assert [line for line in head.splitlines() if line.startswith("- ")] == [
        "- ✔ **f1 · blocker · chunked drops the last item of an odd-length list — verified**",
        "- ⚠ f2 · major · chunked is slow on huge lists — *unverified (no proof was given)*",
        "- ⚠ f4 · minor · a proof at a taken path — *unverified (its proof was not run (test\\_chunks.py is a file "
        "of the repository; a proof test needs a new path))*",
        "- ⚠ f3 · nit · the docstring could say more — *unverified (its proof passes on the head)*"]


def test_findings_are_grouped_by_severity_blockers_first():
    md = card()
    headings = [line for line in md.splitlines() if line.startswith("### ")]
    assert headings == ["### Blockers (1, 1 verified)", "### Major (1, 0 verified)", "### Minor (1, 0 verified)",
                        "### Nits (1, 0 verified)"]
    assert md.index("**f1 ·") < md.index("**f2 ·") < md.index("**f4 ·") < md.index("**f3 ·")


def test_a_verified_finding_shows_its_checked_excerpt_and_its_proof_on_both_sides():
    md = finding_section("J", blocker(), links, chunks)
    assert md.startswith("**f1 · chunked drops the last item of an odd-length list** — ✔ **verified**")
    assert "The range stops one short [chunks.py \\#L3](/cite/J/F:chunks.py?L=3-3)." in md
    assert ("[chunks.py \\#L3](/cite/J/F:chunks.py?L=3-3) *(checked against the head)*\n\n```python\n"
            "    return [items[i:i + size] for i in range(0, len(items) - 1, size)]\n```") in md
    assert "Proof: `python3 -m unittest -v test_review_proof 2>&1` with its test `test\\_review\\_proof.py`" in md
    assert ("head: exit 1 ✖ fails · [log aaa111 #L1-4](/cite/J/aaa111?L=1-4) · "
            "base: exit 0 ✔ passes · [log bbb222 #L1-3](/cite/J/bbb222?L=1-3)") in md
    assert "Output on the head (last lines of log aaa111):\n\n```text\n" in md and "FAILED (failures=1)\n```" in md
    assert "[Download this proof test](/jobs/J/proofs?finding=f1)" in md
    assert "claim" not in md and "unverified" not in md


def test_unverified_findings_never_read_as_facts_and_say_why():
    review = result()
    md = card(review)
    sections = {f.id: finding_section("J", f, links, chunks) for f in review.findings}
    assert "— ⚠ *unverified — no proof was given*" in sections["f2"]
    assert "— ⚠ *unverified — its proof passes on the head*" in sections["f3"]
    assert "its proof was not run (test\\_chunks.py is a file of the repository" in sections["f4"]
    for fid in ("f2", "f3", "f4"):
        assert "> *The reviewer's claim, not checked by the product:* " in sections[fid]
        assert "✔ **verified**" not in sections[fid]
    # The citation past the file's end is struck through, said not to be checked, and has no excerpt or link.
    assert "~~chunks.py \\#L90-95~~ *(citation not checked: chunks.py has 3 lines)*" in sections["f2"]
    assert "L=90-95" not in sections["f2"] and "```python" not in sections["f2"]
    assert "head: exit 0 ✔ passes" in sections["f3"] and "base: exit 0 ✔ passes" in sections["f3"]
    # The reviewer's own words: said to be its own, the link it made up as plain text.
    assert "*The reviewer's note, in its own words (only the findings marked verified are checked facts):* " \
           "Reviewed see (`https://example.invalid/x`)." in md and "](https://example.invalid" not in md


def test_proof_tests_are_offered_and_tests_on_both_sides_are_linked():
    md = card()
    assert ("**Proof tests** (1): [Download them as one patch](/jobs/J/proofs) or **Apply proof tests** below") in md
    assert ("Tests `python3 -m unittest -v`: ✔ base: exit 0 · [log](/cite/J/eee555?L=1-5) · "
            "✔ head: exit 0 · [log](/cite/J/fff666?L=1-5)") in md
    assert proof_patch_of(result()) == PROOF_PATCH and proof_patch_of(result(), "f1") == PROOF_PATCH
    assert proof_patch_of(result(), "f2") == ""
    with pytest.raises(KeyError, match="no finding 'f9'"):
        proof_patch_of(result(), "f9")


def test_an_approval_without_findings_offers_no_fixes():
    review = result("approve")
    review.findings, review.proof_patch = [], ""
    md = card(review)
    assert "**No findings.**" in md and "Fix this" not in md and "Proof tests" not in md
    assert review_buttons("J", review, can_apply=True) == []


def test_buttons_fix_all_blockers_each_finding_and_apply_the_proof_tests():
    buttons = review_buttons("J", result(), can_apply=True)
    assert [(b.name, b.label) for b in buttons] == [
        ("fix_blockers", "Fix all blockers (1)"),
        ("fix_finding_0", "Fix this: f1 (verified blocker)"),
        ("fix_finding_1", "Fix this: f2 (unverified major)"),
        ("fix_finding_2", "Fix this: f4 (unverified minor)"),
        ("fix_finding_3", "Fix this: f3 (unverified nit)"),
        ("apply_proofs", "Apply proof tests")]
    assert buttons[1].payload == {"job_id": "J", "finding": "f1"} and buttons[0].payload == {"job_id": "J"}
    assert "apply_proofs" not in [b.name for b in review_buttons("J", result(), can_apply=False)]


def test_fix_buttons_stop_at_their_limit():
    review = result()
    review.findings = [blocker() for _ in range(MAX_FIX_BUTTONS + 3)]
    for i, f in enumerate(review.findings, 1):
        f.id = f"f{i}"
    names = [b.name for b in review_buttons("J", review, can_apply=False)]
    assert names == ["fix_blockers"] + [f"fix_finding_{i}" for i in range(MAX_FIX_BUTTONS)]


def review_job(store, state=states.SUCCEEDED):
    request = ReviewRequest("branch", "main", "feature", "1" * 40, "2" * 40)
    job = store.create_job(task="Review feature against main", title="Review feature against main", repo="/r",
                           thread_id="t1", state=state, summary="**Review: changes requested** — as rendered",
                           outcome={"kind": "findings", "kind_reason": "findings"})
    store.put_artifact(job.id, REVIEW_REQUEST, request.to_json())
    if state == states.SUCCEEDED:
        store.put_artifact(job.id, REVIEW_ARTIFACT, json.dumps(result().as_dict()))
    return job


def test_a_finished_review_jobs_card_is_the_review_not_a_job_summary(store):
    job = review_job(store)
    md = render_job_card(store, job.id)
    assert md.startswith("### Job 1 · Review feature against main")
    assert "## Verdict: ✗ Changes requested" in md and "*Review of feature against main · base" in md
    assert "#### Summary" not in md and "### Result:" not in md and "as rendered" not in md
    assert md.index("## Verdict") < md.index("### Blockers")


def test_a_running_or_failed_review_is_a_job_card(store):
    job = review_job(store, states.FAILED)
    md = render_job_card(store, job.id)
    assert "## Verdict" not in md and "#### Summary" in md


def test_a_reopened_thread_renders_the_review_card_from_its_one_load(store):
    from assistant.web.threadview import ThreadJobsView

    job = review_job(store)
    view = ThreadJobsView(store, "t1")
    assert view.loaded.reviews[(job.id, REVIEW_ARTIFACT)] == store.get_artifact(job.id, REVIEW_ARTIFACT)
    assert render_job_card(view, job.id) == render_job_card(store, job.id)


# ---------------------------------------------------------------------------------------------- self-review
def test_a_self_review_on_a_coding_jobs_card_marks_each_finding_and_offers_no_review_downloads():
    from assistant.domain.review import SelfReview
    from assistant.web.review_card import render_self_review
    md = render_self_review("J", SelfReview("done", seconds=41.6, result=result()), links, chunks)
    assert md.startswith("#### Self-review of this change: ✗ Changes requested\n\n*a blocker or major finding is "
                         "verified by a proof the product ran* · 4 findings, 1 verified by a proof the product ran "
                         "on the change and on the start commit · 42 s")
    assert "- ✔ **f1 · blocker · chunked drops the last item of an odd-length list — verified**" in md
    assert "- ⚠ f2 · major · chunked is slow on huge lists — *unverified (no proof was given)*" in md
    assert "**f1 · chunked drops the last item of an odd-length list** — ✔ **verified**" in md
    # The proofs route serves review jobs only: a coding job's card links no proof download.
    assert "/proofs" not in md and "Fix this" not in md
    approve = render_self_review("J", SelfReview("done", result=result("approve")), links, chunks)
    assert approve.startswith("#### Self-review of this change: ✓ Approve")


def test_a_self_review_that_did_not_complete_says_so_and_that_the_result_is_unreviewed():
    from assistant.domain.review import SelfReview
    from assistant.web.review_card import render_self_review
    md = render_self_review("J", SelfReview("incomplete", reason="its time (10 s) ran out: no report"), links, chunks)
    assert md == ("#### Self-review: did not complete\n\n⚠ *its time (10 s) ran out: no report* — the result above "
                  "is the job's own, unreviewed.")
