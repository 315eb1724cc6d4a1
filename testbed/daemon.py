"""Run jobpub: in this process (integration) or as real replica processes (acceptance)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from jobpub import app
from jobpub.metrics import Metrics
from jobpub.settings import Settings


def make_settings(db_url: str, mqtt_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "mqtt_url": mqtt_url,
        "http_port": 0,
        "poll_interval": 0.5,
        "log_format": "json",
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Metrics]:
    """jobpub serving in a task of this event loop; stopped (and drained) on exit."""
    stop = asyncio.Event()
    metrics = Metrics()
    task = asyncio.create_task(app.serve(settings, stop, metrics), name="jobpub-under-test")
    try:
        yield metrics
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def env_for(db_url: str, mqtt_url: str, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPUB_")}
    env.update(
        JOBPUB_DATABASE_URL=db_url,
        JOBPUB_MQTT_URL=mqtt_url,
        JOBPUB_HTTP_PORT="0",
        JOBPUB_LOG_FORMAT="json",
        JOBPUB_POLL_INTERVAL="0.5",
        PYTHONOPTIMIZE="2",  # as the image runs it: no docstrings, no asserts
    )
    env.update({f"JOBPUB_{k.upper()}": v for k, v in overrides.items()})
    return env


class Replica:
    """A `jobpub run` process."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobpub", "run"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def signal(self, number: signal.Signals) -> None:
        self.process.send_signal(number)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")
