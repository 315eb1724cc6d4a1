"""Composition root: build the parts, own every task, stop in order."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import structlog

from jobpub.errors import DatabaseError
from jobpub.http import HttpServer, Response
from jobpub.metrics import CONTENT_TYPE, Metrics
from jobpub.publisher import MqttPublisher, PublisherConfig
from jobpub.relay import Relay, RelayConfig
from jobpub.settings import Settings, redact_url
from jobpub.store import PostgresStore
from jobpub.waiting import wait_for_event

log = structlog.get_logger("jobpub.app")


async def run(settings: Settings) -> int:
    """Run one replica until SIGTERM/SIGINT; 0 after a clean drain."""
    stop = asyncio.Event()
    _handle_signals(stop)
    await serve(settings, stop)
    return 0


async def serve(settings: Settings, stop: asyncio.Event, metrics: Metrics | None = None) -> None:
    """Run one replica until `stop` is set, then drain and close in reverse order."""
    metrics = metrics or Metrics()
    store = PostgresStore(settings, metrics)
    publisher = MqttPublisher(_publisher_config(settings), metrics)
    relay = Relay(
        store,
        publisher,
        metrics,
        RelayConfig(
            batch_size=settings.batch_size,
            concurrency=settings.concurrency,
            poll_interval=settings.poll_interval,
            lookahead=settings.lookahead,
            shutdown_timeout=settings.shutdown_timeout,
        ),
    )
    drained = asyncio.Event()  # the relay is done: connections and servers may close
    healthy_within = max(60.0, 3 * settings.poll_interval)

    def healthz() -> Response:
        alive = time.monotonic() - relay.heartbeat < healthy_within
        return Response(200, b"ok\n") if alive else Response(503, b"relay loop stalled\n")

    def readyz() -> Response:
        problems = [
            *([] if relay.database_ok else ["database not connected"]),
            *([] if publisher.connected else ["broker not connected"]),
        ]
        if problems:
            return Response(503, ("; ".join(problems) + "\n").encode())
        return Response(200, b"ready\n")

    http = HttpServer(
        settings.http_host,
        settings.http_port,
        {
            "/metrics": lambda: Response(200, metrics.render(), CONTENT_TYPE),
            "/healthz": healthz,
            "/readyz": readyz,
        },
    )
    log.info(
        "starting",
        database=redact_url(settings.database_url.get_secret_value()),
        broker=str(settings.mqtt),
        batch_size=settings.batch_size,
        concurrency=settings.concurrency,
        partition=f"{settings.consumer_index}/{settings.consumer_count}",
        pid=os.getpid(),
    )
    await store.open()
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(publisher.run(drained), name="mqtt-connection")
            tasks.create_task(store.listen(relay.notify, drained), name="database-listener")
            tasks.create_task(http.serve(drained), name="http-server")
            tasks.create_task(
                _sample_backlog(store, metrics, settings.backlog_interval, drained),
                name="backlog-sampler",
            )
            relay_task = tasks.create_task(relay.run(stop), name="relay")
            relay_task.add_done_callback(lambda _: drained.set())
    finally:
        await store.close()
    log.info("stopped")


def _handle_signals(stop: asyncio.Event) -> None:
    """First SIGTERM/SIGINT: stop claiming and drain. Second: exit at once."""
    loop = asyncio.get_running_loop()

    def on_signal(number: signal.Signals) -> None:
        if stop.is_set():
            log.warning("forced_exit", signal=number.name)
            os._exit(128 + number)  # in-flight transactions roll back as connections drop
        log.info("stopping", signal=number.name)
        stop.set()

    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, on_signal, number)


async def _sample_backlog(
    store: PostgresStore, metrics: Metrics, interval: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            due, scheduled, dead = await store.sample_backlog()
        except DatabaseError as exc:
            log.debug("backlog_sample_failed", error=str(exc))
        else:
            metrics.jobs_due.set(due)
            metrics.jobs_scheduled.set(scheduled)
            metrics.jobs_dead_total.set(dead)
        await wait_for_event(stop, interval)


def _publisher_config(settings: Settings) -> PublisherConfig:
    endpoint = settings.mqtt
    return PublisherConfig(
        host=endpoint.host,
        port=endpoint.port,
        client_id=f"{settings.mqtt_client_id_prefix}-{os.urandom(6).hex()}",
        protocol=settings.mqtt_protocol,
        username=endpoint.username,
        password=endpoint.password.get_secret_value() if endpoint.password else None,
        tls=endpoint.tls,
        ca_file=settings.mqtt_ca_file,
        cert_file=settings.mqtt_cert_file,
        key_file=settings.mqtt_key_file,
        keepalive=settings.mqtt_keepalive,
        ack_timeout=settings.mqtt_ack_timeout,
        inflight=settings.mqtt_inflight,
        topic_prefixes=settings.allowed_topic_prefixes,
    )
