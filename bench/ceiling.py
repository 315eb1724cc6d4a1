"""The ceiling: the same messages straight to the broker, no database, fastest client.

The fastest client we have is jobpub's own batch writer (`jobpub.mqtt`). Two
connections reached 53,000-57,000 msg/s here against 35,000-45,000 for one (with a
window of 1,000 or 65,535), four no more than two: the ceiling uses two.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from jobpub.mqtt import PROTOCOL_V5, Answer, Message, MqttConnection

CONNECTIONS = 2


async def _publish(port: int, prefix: str, ids: range, batch: int, connections: int) -> float:
    async with contextlib.AsyncExitStack() as stack:
        opened = [
            await stack.enter_async_context(
                MqttConnection(
                    "127.0.0.1", port, client_id=f"ceiling-{number}", protocol=PROTOCOL_V5
                )
            )
            for number in range(connections)
        ]
        # The same message a replica sends: its job id as a user property.
        messages = [
            Message(
                f"{prefix}/{i}", f'{{"n":{i}}}'.encode(), 1, False,
                (("jobpub-job-id", str(i)),),
            )
            for i in ids
        ]  # fmt: skip
        started = time.monotonic()
        pending = [
            opened[number % connections].publish(messages[start : start + batch])
            for number, start in enumerate(range(0, len(messages), batch))
        ]
        answers = [a for group in await asyncio.gather(*pending) for a in group]
        elapsed = time.monotonic() - started
    if not all(isinstance(a, Answer) and a.accepted for a in answers):
        raise RuntimeError("ceiling run: not every message was acknowledged")
    return elapsed


def run_ceiling(
    port: int, prefix: str, ids: range, batch: int = 1000, connections: int = CONNECTIONS
) -> float:
    return asyncio.run(_publish(port, prefix, ids, batch, connections))
