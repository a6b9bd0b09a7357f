"""Runs a Chainlit app (ours, or the peer) as `chainlit run` does, with a probe that bench/load.py reads.

    python bench/probed_app.py APP.py PORT

The probe adds a few routes to the same server:
  POST /bench/probe/watch     start measuring event-loop lag (a 10 ms sleep's overshoot, on the loop)
  POST /bench/probe/reset     forget the lag samples so far
  GET  /bench/probe           {"lag_ms": [...], "statements": N}: lag samples since the reset, SQL statements
                              executed by the process since it started
  POST /bench/probe/profile?action=start|stop&path=P   pyinstrument on the event loop's thread; stop writes
                              a text report to P (pyinstrument is a benchmark-only dependency)
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
TICK_S = 0.010


def install_probe(app) -> None:
    from fastapi import APIRouter
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from assistant.web.routes import install_routes

    statements = [0]
    lags: list[float] = []
    watching: list[asyncio.Task] = []
    profiler: list = []

    @event.listens_for(Engine, "before_cursor_execute")
    def _count(*_args) -> None:
        statements[0] += 1

    async def watch() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(TICK_S)
            lags.append((time.perf_counter() - started - TICK_S) * 1000)

    router = APIRouter()

    @router.post("/bench/probe/watch")
    async def start_watching():
        if not watching:
            watching.append(asyncio.create_task(watch()))
        return {"ok": True}

    @router.post("/bench/probe/reset")
    async def reset():
        lags.clear()
        return {"ok": True}

    @router.get("/bench/probe")
    async def read():
        return {"lag_ms": list(lags), "statements": statements[0]}

    @router.post("/bench/probe/profile")
    async def profile(action: str, path: str = ""):
        from pyinstrument import Profiler
        if action == "start":
            profiler[:] = [Profiler(interval=0.001, async_mode="disabled")]
            profiler[0].start()
        else:
            profiler[0].stop()
            Path(path).write_text(profiler[0].output_text(unicode=True, color=False, show_all=False))
        return {"ok": True}

    install_routes(app, router)


def main() -> None:
    target, port = sys.argv[1], sys.argv[2]
    os.environ["CHAINLIT_HOST"] = "127.0.0.1"
    os.environ["CHAINLIT_PORT"] = port
    from chainlit.cli import run_chainlit
    from chainlit.config import config
    from chainlit.server import app
    config.run.headless = True
    install_probe(app)
    run_chainlit(target)


if __name__ == "__main__":
    main()
