"""An independent verifying subscriber: paho-mqtt, not jobpub's own MQTT code."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties

from testbed.waiting import wait_until


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    job_id: int | None
    qos: int
    retain: bool
    arrived_at: float  # time.time()


class Subscriber:
    """Subscribes to `<prefix>/#` at QoS 2 and records every message with its arrival."""

    def __init__(
        self, port: int, prefix: str, protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5
    ) -> None:
        self.prefix = prefix
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"verifier-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._port = port

    def topic(self, suffix: str) -> str:
        return f"{self.prefix}/{suffix}"

    def __enter__(self) -> Self:
        self._client.connect("127.0.0.1", self._port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("verifying subscriber did not subscribe")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe(f"{self.prefix}/#", qos=2)

    def _on_message(self, _: mqtt.Client, __: object, message: mqtt.MQTTMessage) -> None:
        arrived = time.time()
        job_id = None
        properties: Properties | None = getattr(message, "properties", None)
        for key, value in getattr(properties, "UserProperty", []) or []:
            if key == "jobpub-job-id":
                job_id = int(value)
        with self._lock:
            self.messages.append(
                Received(
                    message.topic,
                    bytes(message.payload),
                    job_id,
                    message.qos,
                    bool(message.retain),
                    arrived,
                )
            )

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def distinct_jobs(self) -> set[int | None]:
        with self._lock:
            return {m.job_id for m in self.messages}

    def wait_for_jobs(self, count: int, timeout: float) -> set[int | None]:
        """Wait until `count` distinct job ids arrived (duplicates do not count)."""
        wait_until(
            lambda: len(self.distinct_jobs()) >= count,
            timeout,
            f"{count} distinct jobs (have {len(self.distinct_jobs())})",
        )
        return self.distinct_jobs()

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        wait_until(
            lambda: self.count() >= count, timeout, f"{count} messages (have {self.count()})"
        )
        return self.snapshot()
