"""Publish clients side by side: why jobpub writes its own publish path.

Each client sends the same QoS 1 messages to the bench broker (no database) and
counts the broker's PUBACKs. aiomqtt awaits each publish; 100 senders share the
messages, a window of 100 in flight. jobpub's batch writer
writes a batch of PUBLISH packets at once and settles each by packet id.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import aiomqtt

from bench.ceiling import run_ceiling
from bench.harness import ScenarioResult

WINDOW = 100


async def _aiomqtt(port: int, prefix: str, count: int) -> float:
    numbers = iter(range(count))
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-aiomqtt", max_inflight_messages=WINDOW
    ) as client:
        # 100 awaited publishes are the window, not a backlog: aiomqtt warns above 10.
        client.pending_calls_threshold = WINDOW

        async def sender() -> None:
            for n in numbers:  # shared: each number is taken by one sender
                await client.publish(f"{prefix}/{n}", f'{{"n":{n}}}', qos=1)

        started = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for index in range(WINDOW):
                group.create_task(sender(), name=f"aiomqtt-sender-{index}")
        return time.monotonic() - started


def compare(port: int, count: int, repeat: int) -> list[ScenarioResult]:
    """Messages per second for each client, the median of `repeat` runs."""
    runs = {
        "client-aiomqtt-window-100": [
            asyncio.run(_aiomqtt(port, "bench/clients/aiomqtt", count)) for _ in range(repeat)
        ],
        "client-jobpub-batch-1000": [
            run_ceiling(port, "bench/clients/jobpub", range(count), connections=1)
            for _ in range(repeat)
        ],
    }
    return [
        ScenarioResult(
            name,
            0,
            count,
            round(count / statistics.median(seconds)),
            None,
            notes={"runs_msgs_per_s": [round(count / s) for s in seconds]},
        )
        for name, seconds in runs.items()
    ]
