"""Composition root: build the parts, own every task, stop in order."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from datetime import timedelta

import structlog

from jobpub import __version__
from jobpub.db.claim import ClaimConfig, Claimer
from jobpub.db.complete import Completer, RetryPolicy
from jobpub.db.database import Database, DatabaseConfig
from jobpub.db.listen import Listener, sample_backlog
from jobpub.db.probes import ProbeScheduler, ProbeSeat
from jobpub.db.replicas import ReplicaRecord, ReplicaRegistry
from jobpub.db.retention import Pruner, RetentionConfig
from jobpub.db.schedules import ScheduleStore
from jobpub.errors import DatabaseError
from jobpub.health import DatabaseHealth, Heartbeat, stalled_after
from jobpub.http import HttpServer, Response, Route
from jobpub.metrics import CONTENT_TYPE, Metrics
from jobpub.probe import DeliveryProbe, ProbeConfig
from jobpub.publisher import MqttPublisher, PublisherConfig
from jobpub.ratelimit import TokenBucket
from jobpub.relay import Relay, RelayConfig
from jobpub.scheduling.materializer import Materializer, MaterializerConfig
from jobpub.settings import Settings, redact_url
from jobpub.waiting import wait_for_event

log = structlog.get_logger("jobpub.app")

# The backlog sampler waits at least this many times as long as its last sample took.
SAMPLE_DUTY_FACTOR = 20


async def run(settings: Settings) -> int:
    """Run one replica until SIGTERM/SIGINT; 0 after a clean drain."""
    stop = asyncio.Event()
    _handle_signals(stop)
    await serve(settings, stop)
    return 0


async def serve(settings: Settings, stop: asyncio.Event, metrics: Metrics | None = None) -> None:
    """Run one replica until `stop` is set, then drain and close in reverse order."""
    metrics = metrics or Metrics()
    database = Database(_database_config(settings))
    claimer = Claimer(database, _claim_config(settings), metrics)
    completer = Completer(database, _retry_policy(settings))
    listener = Listener(database)
    pruner = Pruner(settings.database_url.get_secret_value(), _retention_config(settings), metrics)
    publisher = MqttPublisher(_publisher_config(settings), metrics)
    materializer = Materializer(ScheduleStore(database), _materializer_config(settings))
    health, heartbeat = DatabaseHealth(), Heartbeat()  # the relay writes, /readyz, /healthz read
    # This replica's share of JOBPUB_RATE_LIMIT: the whole limit until the first heartbeat
    # has counted the fleet (it runs before the broker connection lets the relay claim).
    budget = TokenBucket(settings.rate_limit) if settings.rate_limit else None
    registry = ReplicaRegistry(database, _replica_record(settings))
    relay = Relay(
        claimer,
        completer,
        publisher,
        metrics,
        _relay_config(settings),
        health=health,
        heartbeat=heartbeat,
        budget=budget,
    )
    probe = (
        DeliveryProbe(
            _probe_config(settings),
            ProbeScheduler(database),
            ProbeSeat(settings.database_url.get_secret_value(), settings.hold_timeout),
            publisher.subscriber_connection,
            metrics,
        )
        if settings.probe_topic
        else None
    )
    drained = asyncio.Event()  # the relay is done: connections and servers may close

    def readyz() -> Response:
        problems = [
            *([] if health.ready else ["database not connected"]),
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
            "/healthz": healthz_route(
                heartbeat, stalled_after(settings.poll_interval, settings.hold_timeout)
            ),
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
    await database.open()
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(publisher.run(drained), name="mqtt-connection")
            tasks.create_task(listener.listen(relay.notify, drained), name="database-listener")
            tasks.create_task(http.serve(drained), name="http-server")
            tasks.create_task(
                _sample_backlog(database, metrics, settings.backlog_interval, drained),
                name="backlog-sampler",
            )
            tasks.create_task(materializer.run(drained), name="schedule-materializer")
            tasks.create_task(pruner.run(drained), name="retention-pruner")
            if probe is not None:
                tasks.create_task(probe.run(drained), name="delivery-probe")
            tasks.create_task(
                _keep_registered(
                    registry, budget, settings.rate_limit, settings.heartbeat_interval, drained
                ),
                name="replica-heartbeat",
            )
            relay_task = tasks.create_task(relay.run(stop), name="relay")
            relay_task.add_done_callback(lambda _: drained.set())
    finally:
        await database.close()
    log.info("stopped")


def healthz_route(heartbeat: Heartbeat, stalled_after_s: float) -> Route:
    """/healthz: 200 while the claim loop comes round, 503 once it has not for a while
    (an orchestrator then restarts the replica)."""

    def healthz() -> Response:
        if heartbeat.alive(stalled_after_s):
            return Response(200, b"ok\n")
        return Response(503, b"relay loop stalled\n")

    return healthz


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


def _database_config(settings: Settings) -> DatabaseConfig:
    return DatabaseConfig(
        url=settings.database_url.get_secret_value(),
        pool_size=settings.concurrency,
        transaction_pooling=settings.transaction_pooling,
        hold_timeout=settings.hold_timeout,
    )


def _claim_config(settings: Settings) -> ClaimConfig:
    return ClaimConfig(
        limit=settings.batch_size,
        lookahead=settings.lookahead,
        consumer_count=settings.consumer_count,
        consumer_index=settings.consumer_index,
        takeover_delay=settings.takeover_delay,
        max_payload_bytes=settings.max_payload_bytes,
        batch_max_bytes=settings.batch_max_bytes,
    )


def _retention_config(settings: Settings) -> RetentionConfig:
    return RetentionConfig(
        published=settings.retention,
        dead=settings.dead_retention,
        transaction_pooling=settings.transaction_pooling,
    )


def _retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        backoff=settings.retry_backoff,
        backoff_max=settings.retry_backoff_max,
    )


def _relay_config(settings: Settings) -> RelayConfig:
    return RelayConfig(
        batch_size=settings.batch_size,
        concurrency=settings.concurrency,
        poll_interval=settings.poll_interval,
        lookahead=settings.lookahead,
        shutdown_timeout=settings.shutdown_timeout,
        hold_timeout=settings.hold_timeout,
    )


async def _sample_backlog(
    database: Database, metrics: Metrics, interval: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            due, scheduled, dead = await sample_backlog(database)
        except DatabaseError as exc:
            log.debug("backlog_sample_failed", error=str(exc))
        else:
            metrics.jobs_due.set(due)
            metrics.jobs_scheduled.set(scheduled)
            metrics.dead_jobs.set(dead)
        # The count reads every pending row's index entry: 0.3 s (with parallel workers on
        # both cores) at 1.1 million pending rows, measured. Millions scheduled ahead must
        # not make it a standing load on the cores publishing needs: at most a twentieth.
        taken = time.monotonic() - started
        await wait_for_event(stop, max(interval, SAMPLE_DUTY_FACTOR * taken))


def _materializer_config(settings: Settings) -> MaterializerConfig:
    # A pass refills schedules whose rows end within half the horizon, so passes come
    # well within that: a quarter of the horizon, at most every 5 s (idle: one indexed
    # statement per pass).
    return MaterializerConfig(
        horizon=timedelta(seconds=settings.schedule_horizon),
        interval=min(settings.schedule_horizon / 4, 5.0),
    )


def _probe_config(settings: Settings) -> ProbeConfig:
    assert settings.probe_topic  # noqa: S101 - called only when the probe is on
    return ProbeConfig(
        topic=settings.probe_topic,
        interval=settings.probe_interval,
        timeout=settings.probe_timeout,
    )


def _replica_record(settings: Settings) -> ReplicaRecord:
    return ReplicaRecord(
        id=str(uuid.uuid4()),
        host=socket.gethostname(),
        version=__version__,
        partition=f"{settings.consumer_index}/{settings.consumer_count}",
        stale_after=settings.replica_stale_after,
    )


async def _keep_registered(
    registry: ReplicaRegistry,
    budget: TokenBucket | None,
    rate_limit: float,
    interval: float,
    stop: asyncio.Event,
) -> None:
    """Heartbeat in jobpub_replicas until `stop` (the relay has drained), then leave.

    Each beat recounts the live replicas and sets this replica's share of the rate limit.
    A failed beat keeps the last share: the relay meets the same outage when it claims.
    """
    replicas = 0
    while not stop.is_set():
        try:
            live = await registry.beat()
        except DatabaseError as exc:
            log.debug("replica_heartbeat_failed", error=str(exc))
        else:
            if live != replicas:
                replicas = live
                if budget is not None:
                    budget.set_rate(rate_limit / live)
                log.info(
                    "replicas_counted", replicas=live,
                    **({"rate_share_per_s": round(rate_limit / live, 2)} if budget else {}),
                )  # fmt: skip
        await wait_for_event(stop, interval)
    try:
        await registry.leave()
    except DatabaseError as exc:  # the others remove the row once it is stale
        log.warning("replica_leave_failed", error=str(exc))


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
