"""Jobs the server died under get a summary too, written from their log when the next process starts."""
from assistant.core import Assistant
from assistant.store import Store


def test_an_interrupted_job_gets_a_digest_summary_at_start_up(data_dir, settings_for, scripted_model):
    store = Store(f"sqlite:///{data_dir / 'assistant.db'}")
    job = store.create_job(task="Fix it", repo="/r", runner="gone-host:1")
    for state in ("preparing", "running"):
        store.transition(job.id, state)
    chunk = store.add_chunk(job_id=job.id, command="python3 -m pytest -q", text="F\n1 failed in 0.1s\n", exit_code=1)
    store.close()
    assistant = Assistant(settings_for(scripted_model))
    try:
        assistant.start(sweep=False)
        job = assistant.store.get_job(job.id)
    finally:
        assistant.close()
    assert job.state == "interrupted" and job.summary.startswith("The job was interrupted: ")
    assert f"- The last test run, `python3 -m pytest -q`, failed (exit 1, after the last edit) 【{chunk.id}†L1-L2】" in job.summary
    assert job.outcome["kind"] == "no result" and job.outcome["summary_source"] == "log digest"
    assert all(c["valid"] for c in job.citations) and not scripted_model.requests   # no model call at start-up
