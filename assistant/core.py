"""The composition root: one Assistant per process wires settings, store, model, jobs and conversation.

The web app, the CLI and the tests build exactly this object; nothing here knows about Chainlit.
"""
from __future__ import annotations

import logging
import threading

from .config import Settings, load_settings
from .conversation.service import Conversation
from .jobs.manager import JobManager, interrupt_orphans
from .llm.client import ModelClient
from .store import Store

log = logging.getLogger(__name__)

SMALL_MODEL_NOTICE = ("Running on the embedded {model}, a small coding model on this machine's CPU: answers quote the "
                      "code they read, jobs manage small, well-tested fixes, and both are slower than a hosted model. "
                      "Point the assistant at a stronger model with OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL (any "
                      "OpenAI-compatible server: vLLM, Ollama, llama.cpp).")


class Assistant:
    def __init__(self, settings: Settings, store: Store | None = None):
        self.store = store or Store(settings.resolved_database_url)
        self.local_server = None
        base_url = None
        if settings.uses_local_model:
            from .llm.local import LocalModelConfig, LocalModelServer
            self.local_server = LocalModelServer(LocalModelConfig.from_settings(settings))
            base_url = "http://127.0.0.1:0/v1"  # replaced by start(); requests before it fail clearly
            # llama.cpp's server accepts native tools and ignores them; grammar-constrained actions hold.
            protocol = "grammar" if settings.tool_protocol == "auto" else settings.tool_protocol
            settings = settings.model_copy(update={
                "model": self.local_server.model_name, "router_model": None, "answer_model": None,
                "agent_model": None, "summary_model": None, "context_window": settings.local_ctx,
                "tool_protocol": protocol, "answer_max_tokens": min(settings.answer_max_tokens, 400)})
        self.settings = settings
        self.model = ModelClient(settings, base_url=base_url, usage_sink=self._record_usage)
        # In this process's threads, or with PostgreSQL on the durable queue that workers serve.
        self.jobs = JobManager(settings, self.store, self.model)
        self.conversation = Conversation(settings, self.store, self.model, self.jobs)
        self.worker = None
        self._started = False

    def _record_usage(self, role, model, prompt, completion, job_id, thread_id) -> None:
        self.store.record_usage(role=role, model=model, prompt_tokens=prompt, completion_tokens=completion,
                                job_id=job_id, thread_id=thread_id)

    def start(self, *, sweep: bool = True) -> None:
        """Recover from a previous run and bring up what the model needs."""
        if self._started:
            return
        # With the queue, a job's runner is judged by its worker's heartbeat (jobs/worker.py), not by this host.
        # Each is assessed and its end notified (the webhooks), as if its own process had ended it.
        interrupted = [] if self.settings.uses_queue else interrupt_orphans(self.settings, self.store,
                                                                            notifier=self.jobs.notifier)
        if interrupted:
            log.warning("marked %d jobs interrupted (the server stopped under them): %s", len(interrupted), interrupted)
        if sweep:
            try:
                from .egress import sweep_orphan_egress
                from .sandbox import sweep_orphans
                removed = sweep_orphans() + sweep_orphan_egress()
                if removed:
                    log.warning("removed %d sandbox containers and egress proxies left by a previous run", removed)
            except Exception as exc:  # no engine: nothing to sweep
                log.info("no orphan sweep: %s", exc)
        self.jobs.notifier.start()  # job notifications an earlier process left unsent
        if self.local_server is not None:
            base_url = self.local_server.start()
            self.model = ModelClient(self.settings, base_url=base_url, api_key=self.local_server.api_key,
                                     usage_sink=self._record_usage, ensure_server=self.local_server.ensure_running)
            self.jobs.model = self.model
            self.conversation.model = self.model
        self._started = True

    def describe(self) -> dict:
        from .sandbox import resolve_backend
        try:
            choice = resolve_backend(self.jobs.sandbox_config)
            backend, reason = choice.backend, choice.fallback or choice.detail
        except Exception as exc:
            backend, reason = "unavailable", str(exc)
        local = self.local_server is not None
        return {
            "model": self.model.model_for("agent"),
            "endpoint": self.model.base_url,
            "local_model": local,
            "model_detail": self.local_server.describe() if local else None,
            "notice": SMALL_MODEL_NOTICE.format(model=self.local_server.config.bundled.description)
            if local and self.local_server.config.bundled else None,
            "backend": backend,
            "backend_reason": reason,
        }

    def start_worker(self, concurrency: int | None = None) -> None:
        """Run a queue worker in this process (`assistant serve` with PostgreSQL), in a thread of its own."""
        from .jobs.worker import QueueWorker

        self.worker = QueueWorker(self.settings, self.store, self.model, concurrency=concurrency,
                                  feed=self.jobs.feed, notifier=self.jobs.notifier)
        self.worker.start_in_thread()  # stopped by close(): its running jobs go back to the queue

    def close(self, wait_s: float | None = None) -> None:
        """Interrupt running jobs (retryable; with the queue, hand them back), stop the embedded model, close
        the store. wait_s bounds the wait for the job workers (see JobManager.shutdown)."""
        if self.worker is not None:  # before the feed it publishes through closes
            self.worker.stop_and_wait(wait_s)
        self.jobs.shutdown(wait_s=wait_s)
        if self.local_server is not None:
            self.local_server.stop()
        self.store.close()


_instance: Assistant | None = None
_instance_lock = threading.Lock()


def load_assistant() -> Assistant:
    """The process's Assistant, built from environment settings on first use."""
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = Assistant(load_settings())
            _instance.start()
            if _instance.settings.uses_queue and _instance.settings.serve_workers:
                _instance.start_worker()
        return _instance
