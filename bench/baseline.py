"""A port of the original JobPublisher loop, the yardstick jobpub must beat. Bench only.

Claim 100 rows with `UPDATE … WHERE id IN (SELECT … ORDER BY fire_at LIMIT 100)
RETURNING` (no SKIP LOCKED), on a new connection per loop; publish one message at a
time at QoS 2 with retain, waiting for each; commit; sleep 50 ms.
"""

from __future__ import annotations

import time

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

CLAIM = """
UPDATE jobs SET processed = true, processed_at = now()
WHERE id IN (SELECT id FROM jobs WHERE NOT processed AND fire_at <= now()
             ORDER BY fire_at LIMIT 100)
RETURNING id, topic, payload
"""


def run_baseline(db_url: str, broker_port: int, total: int, timeout: float) -> float:
    """Publish until `total` rows are done; return the seconds it took."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="baseline")
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    started = time.monotonic()
    done = 0
    try:
        while done < total and time.monotonic() - started < timeout:
            with psycopg.connect(db_url) as conn:
                rows = conn.execute(CLAIM).fetchall()
                for _, topic, payload in rows:
                    client.publish(topic, payload, qos=2, retain=True).wait_for_publish(10)
                conn.commit()
            done += len(rows)
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    return time.monotonic() - started
