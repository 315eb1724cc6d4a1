"""The ceiling: the same messages straight to the broker, no database, fastest client.

The fastest client we have is jobpub's own batch writer (`jobpub.mqtt`).
"""

from __future__ import annotations

import asyncio
import time

from jobpub.models import PUBLISHED, Job
from jobpub.mqtt import PROTOCOL_V5, MqttConnection, encode_connect


async def _publish(port: int, prefix: str, ids: range, batch: int) -> float:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: MqttConnection(PROTOCOL_V5, 1000), "127.0.0.1", port
    )
    conn.send(encode_connect(PROTOCOL_V5, "ceiling", 30, None, None))
    await conn.connack
    jobs = [Job(i, f"{prefix}/{i}", f'{{"n":{i}}}', 1, False, 0.0) for i in ids]
    started = time.monotonic()
    pending = [conn.publish(jobs[start : start + batch]) for start in range(0, len(jobs), batch)]
    outcomes = [o for group in await asyncio.gather(*pending) for o in group]
    elapsed = time.monotonic() - started
    conn.disconnect()
    if any(o is not PUBLISHED for o in outcomes):
        raise RuntimeError("ceiling run: not every message was acknowledged")
    return elapsed


def run_ceiling(port: int, prefix: str, ids: range, batch: int = 1000) -> float:
    return asyncio.run(_publish(port, prefix, ids, batch))
