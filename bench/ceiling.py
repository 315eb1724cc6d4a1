"""The ceiling: the same messages straight to the broker, no database, fastest client.

The fastest client we have is jobpub's own batch writer (`jobpub.mqtt`). Two
connections reached 53,000-57,000 msg/s here against 35,000-45,000 for one (with a
window of 1,000 or 65,535), four no more than two: the ceiling uses two.
"""

from __future__ import annotations

import asyncio
import time

from jobpub.models import PUBLISHED, Job
from jobpub.mqtt import PROTOCOL_V5, MqttConnection, encode_connect

CONNECTIONS = 2


async def _publish(port: int, prefix: str, ids: range, batch: int, connections: int) -> float:
    loop = asyncio.get_running_loop()
    opened = []
    for number in range(connections):
        _, connection = await loop.create_connection(
            lambda: MqttConnection(PROTOCOL_V5, 1000), "127.0.0.1", port
        )
        connection.send(encode_connect(PROTOCOL_V5, f"ceiling-{number}", 30, None, None))
        await connection.connack
        opened.append(connection)
    jobs = [Job(i, f"{prefix}/{i}", f'{{"n":{i}}}', 1, False, 0.0) for i in ids]
    started = time.monotonic()
    pending = [
        opened[number % connections].publish(jobs[start : start + batch])
        for number, start in enumerate(range(0, len(jobs), batch))
    ]
    outcomes = [o for group in await asyncio.gather(*pending) for o in group]
    elapsed = time.monotonic() - started
    for connection in opened:
        connection.disconnect()
    if any(o is not PUBLISHED for o in outcomes):
        raise RuntimeError("ceiling run: not every message was acknowledged")
    return elapsed


def run_ceiling(
    port: int, prefix: str, ids: range, batch: int = 1000, connections: int = CONNECTIONS
) -> float:
    return asyncio.run(_publish(port, prefix, ids, batch, connections))
