"""The shipped Mosquitto config (deploy/mosquitto): what survives a broker crash."""

from __future__ import annotations

import shutil
import subprocess
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from testbed.broker import PROJECT_CONFIG, Broker
from testbed.waiting import wait_until


def autosave_interval() -> int:
    for line in PROJECT_CONFIG.read_text().splitlines():
        if line.startswith("autosave_interval "):
            return int(line.split()[1])
    raise AssertionError(f"{PROJECT_CONFIG} sets no autosave_interval (Mosquitto's is 1800 s)")


def device_session(port: int, *extra: str) -> list[str]:
    """mosquitto_sub as an offline-capable device: a persistent session at QoS 1."""
    binary = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
    return [binary, "-p", str(port), "-c", "-i", "device-7", "-q", "1", "-t", "dev/7/#", *extra]


def test_a_hard_killed_broker_keeps_what_it_queued_before_its_last_autosave(
    own_broker: Broker,
) -> None:
    interval = autosave_interval()
    assert interval <= 10
    subprocess.run(device_session(own_broker.port, "-E"), check=True, timeout=10)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scheduler")
    publisher.connect("127.0.0.1", own_broker.port)
    publisher.loop_start()
    try:
        for number in range(50):
            publisher.publish("dev/7/valve", f"open {number}", qos=1).wait_for_publish(5)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
    acked_at = time.time()
    database = own_broker.directory / "mosquitto.db"
    wait_until(
        lambda: database.exists() and database.stat().st_mtime > acked_at,
        interval + 3,
        f"the broker's autosave (every {interval} s) after the acks",
    )
    own_broker.stop(hard=True)
    own_broker.start()
    received = subprocess.run(
        device_session(own_broker.port, "-C", "50", "-W", "10"),
        check=False, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert received.stdout.splitlines() == [f"open {number}" for number in range(50)]
