"""The route classifier's features and the decisions it takes whatever its weights say."""
import pytest

from assistant.conversation.route_classifier import RouteClassifier, features, pointers, shipped_classifier
from assistant.store import Job

REPO = "/srv/calc"


def jobs(*titles, state="succeeded"):
    return [Job(id=f"j{i}", number=i, title=t, task=t, state=state, repo=REPO) for i, t in enumerate(titles, 1)]


def sure_of(work: float, followup: float) -> RouteClassifier:
    """A classifier whose heads say the same whatever the message: only the decisions taken over them remain."""
    return RouteClassifier({"work": {"bias": work, "weights": {}}, "followup": {"bias": followup, "weights": {}}})


def on(text: str) -> set[str]:
    return {name for name, present in pointers(text).items() if present}


@pytest.mark.parametrize("text", ["nice. add a regression test for that", "it still fails", "fix that",
                                  "can you make it use the redis from docker-compose", "ok, undo that"])
def test_a_pronoun_that_opens_the_message_points_back(text):
    assert "anaphor_first" in on(text)


@pytest.mark.parametrize("text,still_first", [("still crashes for me on an empty email", True),
                                              ("it still returns duplicates on page 3", True),
                                              ("`deploy --dry-run` still uploads the artifact", False),
                                              ("the export is still slow", False)])
def test_still_with_no_subject_of_its_own_points_back(text, still_first):
    assert ("still_first" in on(text)) is still_first


@pytest.mark.parametrize("text", [
    "add a test that reproduces #412",                        # "that" opens a relative clause
    "write a migration that adds an index on orders",
])
def test_that_joining_a_clause_points_nowhere(text):
    assert "anaphor" not in on(text)


@pytest.mark.parametrize("text", [
    "`blobsync push` ignores --output when the path has spaces in it",   # "it": the path the message names
    "can u look at why the docker image is 2GB and shrink it",          # "it": the image, in a later clause
    "the validator accepts negative values, it should reject them",
])
def test_a_pronoun_after_what_the_message_names_points_at_that(text):
    assert {"anaphor", "anaphor_later"} <= on(text) and "anaphor_first" not in on(text)


def test_comparisons_and_times_are_no_pointers_back():
    assert on("whats the diff between finalize and close, they look almost the same") == set()
    assert "still" not in on("is there a reason the API returns 200 with an error body instead of a 4xx?")
    assert "carry_on" not in on("what happens if two workers pick up the same task at the same time?")
    assert {"carry_on"} <= on("now do the same for the update endpoint")
    assert {"still"} <= on("use curl instead, the image has no wget")
    assert {"still"} <= on("the search returns closed venues too")
    assert "still" not in on("the log output is way too noisy in prod")


def test_this_next_to_a_pasted_log_points_at_the_log():
    text = "fix this\n\nFAILED tests/test_money.py::test_round - AssertionError: assert 2 == 3"
    assert "ctx:p_anaphor" not in features(text, jobs("Add a dark theme"))
    assert "ctx:p_anaphor" in features("fix this", jobs("Add a dark theme"))


@pytest.mark.parametrize("text", ["which of my jobs are still running?", "whats the status of all my jobs",
                                  "can I kick off two jobs at the same time or do they queue?",
                                  "different issue: the venue search returns closed venues too",
                                  "unrelated to that: the csv export writes dates as mm/dd"])
def test_jobs_in_general_or_a_new_subject_follow_no_job_up(text):
    guess = sure_of(work=0.0, followup=8.0).predict(text, jobs("Fix the venue search", "Add the csv export"))
    assert guess.followup is False


def test_a_message_that_asks_for_no_changes_is_answered_however_sure_the_work_head_is():
    clf = sure_of(work=8.0, followup=-8.0)
    assert clf.predict("add the cache? don't change anything, just tell me", []).work is False
    assert clf.predict("add a cache for the rates", []).work is True


@pytest.mark.parametrize("text,route", [
    ("the onboarding wizard is super confusing, nobody finds the skip button", "job"),
    ("users keep getting logged out after a few minutes", "job"),
    ("so for some reason the weekly digest goes out on tuesdays now", "job"),
    ("find where the session cookie lifetime is set", "answer"),
    ("which of my jobs are still running?", "answer"),
])
def test_the_shipped_classifier_on_shapes_it_used_to_miss(text, route):
    js = jobs("Add German email templates") if route == "answer" else []
    guess = shipped_classifier().predict(text, js)
    assert ("job" if guess.work else "answer", guess.followup) == (route, False)
