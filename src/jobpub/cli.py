"""`jobpub` and its commands: parse, build Settings once, map failures to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import sys
import time
from datetime import datetime, timedelta

import structlog
from pydantic import SecretStr, ValidationError

from jobpub import __version__, app, client, logs, migrations
from jobpub.db.admin import allow_probe_topic, migrate, requeue
from jobpub.db.database import Connection, command_transaction
from jobpub.db.pauses import InvalidFilter, list_pauses, pause, resume
from jobpub.db.producer import insert_job
from jobpub.db.schedules import (
    NewSchedule,
    add_schedule,
    list_schedules,
    remove_schedule,
    set_schedule_enabled,
)
from jobpub.db.stats import AT_LEAST, ESTIMATE, Count, FleetStats, Stats, read_fleet, read_stats
from jobpub.errors import DatabaseError, DatabaseUnavailable
from jobpub.scheduling.durations import parse_duration
from jobpub.scheduling.occurrences import InvalidSchedule, check_cron
from jobpub.settings import Settings, SettingsFileError, describe_errors

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SETTINGS = 2

# `jobpub add|cancel|reschedule|stats` wait this long at most: for a connection, and for
# a lock (an uncommitted job holding the same dedupe key) before saying why they gave up.
CONNECT_TIMEOUT_S = 10
LOCK_TIMEOUT_S = 5.0

log = structlog.get_logger("jobpub.cli")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jobpub", description="Publish rows of a PostgreSQL jobs table to MQTT at their time."
    )
    parser.add_argument("--version", action="version", version=f"jobpub {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    migrate_parser = commands.add_parser("migrate", help="create or upgrade the jobs table")
    migrate_parser.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="keep retrying an unreachable database this long (default 30)",
    )
    commands.add_parser("run", help="claim due jobs and publish them until SIGTERM")
    requeue_parser = commands.add_parser(
        "requeue", help="put dead jobs back in the queue (all of them, or the given ids)"
    )
    requeue_parser.add_argument("ids", nargs="*", type=int, metavar="ID")
    requeue_parser.add_argument(
        "--all", action="store_true", help="every dead job (required when no ids are given)"
    )
    add_parser = _add_job_parsers(commands)
    stats_parser = commands.add_parser(
        "stats", help="the queue at a glance: counts, due backlog, rate, replicas, pauses"
    )
    stats_parser.add_argument("--json", action="store_true", help="one JSON object")
    _add_schedule_parser(commands)
    pause_parser = commands.add_parser(
        "pause", help="stop publishing rows whose topic matches an MQTT filter ('#': all)"
    )
    pause_parser.add_argument("filter", metavar="FILTER")
    pause_parser.add_argument("--reason", default=None, help="shown by `jobpub pauses`")
    resume_parser = commands.add_parser("resume", help="publish a paused filter's rows again")
    resume_parser.add_argument("filter", metavar="FILTER")
    commands.add_parser("pauses", help="list the paused topic filters")
    commands.add_parser(
        "web", help="serve the dashboard and REST API (needs `pip install 'jobpub[web]'`)"
    )
    args = parser.parse_args(argv)

    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"jobpub: {describe_errors(exc)}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    except SettingsFileError as exc:
        print(f"jobpub: invalid settings: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    logs.configure(settings.log_format, settings.log_level)

    if args.command == "requeue" and not args.ids and not args.all:
        parser.error("requeue: give job ids, or --all for every dead job")
    if args.command == "add" and args.base64:
        # Not a `type=` of PAYLOAD: --base64 may come after it on the command line.
        try:
            args.payload = _base64(args.payload)
        except argparse.ArgumentTypeError as exc:
            add_parser.error(f"argument PAYLOAD: {exc}")
    if args.command == "web":
        return _web(settings)  # its server runs its own event loop
    return asyncio.run(_command(settings, args))


async def _command(settings: Settings, args: argparse.Namespace) -> int:
    """Run the parsed command to its exit code."""
    if args.command == "migrate":
        return await _migrate(settings, args.wait)
    if args.command == "requeue":
        return await _requeue(settings, args.ids or None)
    if args.command in ("add", "cancel", "reschedule", "stats"):
        return await _jobs(settings, args)
    if args.command == "schedule":
        return await _schedule(settings.database_url.get_secret_value(), args)
    if args.command in ("pause", "resume", "pauses"):
        return await _pauses(settings, args.command, getattr(args, "filter", ""),
                             getattr(args, "reason", None))  # fmt: skip
    return await app.run(settings)


def _web(settings: Settings) -> int:
    # Imported here, only for this command: `jobpub run` never loads the web extra.
    try:
        from jobpub.web.config import WebConfig, bind_refusal  # noqa: PLC0415
        from jobpub.web.server import serve  # noqa: PLC0415
    except ImportError as exc:
        print(f"jobpub: web: {exc.name} is missing; pip install 'jobpub[web]'", file=sys.stderr)
        return EXIT_BAD_SETTINGS

    def secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    config = WebConfig(
        database_url=settings.database_url.get_secret_value(),
        host=settings.web_host,
        port=settings.web_port,
        token=secret(settings.web_token),
        readonly_token=secret(settings.web_readonly_token),
        topic_prefixes=settings.allowed_topic_prefixes,
        replica_stale_after=settings.replica_stale_after,
    )
    refusal = bind_refusal(config)
    if refusal:
        print(f"jobpub: invalid settings: {refusal}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    return serve(config)


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _cron(text: str) -> str:
    try:
        check_cron(text)
    except InvalidSchedule as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def _aware_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text!r} (e.g. 2026-12-24T18:00:00+01:00)"
        ) from None
    if moment.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no UTC offset; add one (+01:00, Z) so it means one instant"
        )
    return moment


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise argparse.ArgumentTypeError(f"not base64: {exc}") from None


def _user_property(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return key, value


def _add_job_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """The parsers of add, cancel and reschedule; add's, to refuse its PAYLOAD."""
    add = commands.add_parser("add", help="add a job; prints its id")
    add.add_argument("topic", metavar="TOPIC")
    add.add_argument("payload", metavar="PAYLOAD", help="text published as UTF-8 (see --base64)")
    _add_when(add, required=False)
    add.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    add.add_argument("--retain", action="store_true")
    expiry = add.add_mutually_exclusive_group()
    expiry.add_argument(
        "--expires-at", type=_aware_time, help="not published after this (ISO 8601, offset)"
    )
    expiry.add_argument(
        "--expires-in", type=_duration, help="not published after this long past its time: 1h"
    )
    add.add_argument(
        "--dedupe-key", help="if a job with this key is kept, print its id (a note on stderr)"
    )
    add.add_argument("--base64", action="store_true", help="PAYLOAD is base64 of bytes")
    add.add_argument("--content-type", help="MQTT 5 content type, e.g. application/json")
    add.add_argument(
        "--user-property",
        type=_user_property,
        action="append",
        metavar="KEY=VALUE",
        help="an MQTT 5 user property (repeatable)",
    )
    add.add_argument("--response-topic", help="MQTT 5 response topic")
    add.add_argument("--correlation-data", help="MQTT 5 correlation data (UTF-8 of this text)")
    cancel = commands.add_parser("cancel", help="delete a pending job")
    cancel.add_argument("id", type=int, metavar="ID")
    reschedule = commands.add_parser("reschedule", help="move a pending job to a new time")
    reschedule.add_argument("id", type=int, metavar="ID")
    _add_when(reschedule, required=True)
    return add


def _add_when(parser: argparse.ArgumentParser, *, required: bool) -> None:
    when = parser.add_mutually_exclusive_group(required=required)
    when.add_argument(
        "--at", type=_aware_time, help="ISO 8601 with an offset: 2026-12-24T18:00:00+01:00"
    )
    when.add_argument(
        "--in",
        dest="delay",
        type=_duration,
        help="from now by the database's clock: 30s, 5m, 1h30m"
        + ("" if required else " (default now)"),
    )


def _transaction(url: str, action: str) -> contextlib.AbstractAsyncContextManager[Connection]:
    """A transaction of its own, committed when the block ends without an error; waits
    for a connection and for locks bounded (CONNECT_TIMEOUT_S, LOCK_TIMEOUT_S)."""
    return command_transaction(
        url, action, connect_timeout=CONNECT_TIMEOUT_S, lock_timeout=LOCK_TIMEOUT_S
    )


async def _jobs(settings: Settings, args: argparse.Namespace) -> int:
    """`jobpub add|cancel|reschedule|stats`: jobpub.client's checks and statements."""
    if args.command == "stats":
        return await _stats(settings, as_json=args.json)
    url = settings.database_url.get_secret_value()
    try:
        if args.command == "add":
            await _add(url, args)
        elif args.command == "cancel":
            async with _transaction(url, f"cancelling job {args.id}") as connection:
                await client.cancel_async(connection, args.id)
            log.info("job_cancelled", job_id=args.id)
        else:
            async with _transaction(url, f"rescheduling job {args.id}") as connection:
                await client.reschedule_async(connection, args.id, at=args.at, delay=args.delay)
            log.info("job_rescheduled", job_id=args.id)
    except ValueError as exc:  # jobpub.client's checks, before any SQL: "add: …"
        print(f"jobpub: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    except DatabaseError as exc:  # no such job, not pending, refused, unreachable
        print(f"jobpub: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def _add(url: str, args: argparse.Namespace) -> None:
    """Print the new job's id, or with its dedupe key taken the existing job's (and say so)."""
    properties = client.Properties(
        content_type=args.content_type,
        user_properties=dict(args.user_property) if args.user_property else None,
        response_topic=args.response_topic,
        correlation_data=args.correlation_data.encode()
        if args.correlation_data is not None
        else None,
    )
    job = client.new_job(
        args.topic, args.payload, at=args.at, delay=args.delay, qos=args.qos,
        retain=args.retain, expires_at=args.expires_at, expires_in=args.expires_in,
        dedupe_key=args.dedupe_key, properties=properties,
    )  # fmt: skip
    async with _transaction(url, "adding a job") as connection:
        added = await insert_job(connection, job)
    if added.deduplicated:
        print(f"jobpub: add: dedupe key taken: existing job {added.id}", file=sys.stderr)
    print(added.id)


async def _stats(settings: Settings, *, as_json: bool) -> int:
    try:
        async with _transaction(settings.database_url.get_secret_value(), "reading stats") as c:
            stats = await read_stats(c)  # one transaction: both read the same now()
            fleet = await read_fleet(c, settings.replica_stale_after)
    except DatabaseError as exc:
        print(f"jobpub: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(_stats_json(stats, fleet)) if as_json else _stats_text(stats, fleet))
    return EXIT_OK


def _stats_json(stats: Stats, fleet: FleetStats) -> dict[str, object]:
    def count(value: Count) -> dict[str, object]:
        return {"value": value.value, "exact": value.exact, "kind": value.kind}

    return {
        "counts": {
            "pending": count(stats.pending),
            "due": count(stats.due),
            "published": count(stats.published),
            "dead": count(stats.dead),
            "expired": count(stats.expired),
        },
        "oldest_due_age_s": stats.oldest_due_age_s,
        "published_last_minute": count(fleet.published_last_minute),
        "expired_last_minute": count(fleet.expired_last_minute),
        "live_replicas": fleet.live_replicas,
        "pauses": fleet.paused_filters,
        "schedules": stats.schedules,
        "schedules_enabled": stats.schedules_enabled,
        "measured_at": stats.measured_at.isoformat(),
    }


def _stats_text(stats: Stats, fleet: FleetStats) -> str:
    def count(value: Count) -> str:
        if value.kind == ESTIMATE:
            return f"about {value.value:,} (the table's statistics)"
        return f"at least {value.value:,}" if value.kind == AT_LEAST else f"{value.value:,}"

    oldest = stats.oldest_due_age_s
    late = f" (oldest {_age(oldest)} late)" if oldest is not None else ""
    pauses = fleet.paused_filters
    shown = ", ".join(pauses[:5]) + (f", … {len(pauses) - 5} more" if len(pauses) > 5 else "")
    rows = [
        ("pending", count(stats.pending)),
        ("due", count(stats.due) + late),
        ("dead", count(stats.dead)),
        ("expired", count(stats.expired)),
        ("published", count(stats.published)),
        ("last minute", f"{count(fleet.published_last_minute)} published, "
                        f"{count(fleet.expired_last_minute)} expired"),
        ("replicas", f"{fleet.live_replicas} live"),
        ("pauses", f"{len(pauses)}" + (f": {shown}" if pauses else "")),
        ("schedules", f"{stats.schedules} ({stats.schedules_enabled} enabled)"),
    ]  # fmt: skip
    return "\n".join(f"{name:<12} {value}" for name, value in rows)


def _add_schedule_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    schedule = commands.add_parser(
        "schedule", help="recurring schedules (rows of the schedules table; docs/schedules.md)"
    )
    actions = schedule.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every schedule with its next pending occurrence")
    add = actions.add_parser("add", help="add a schedule (the INSERT the README shows)")
    add.add_argument("name")
    add.add_argument("topic")
    add.add_argument("payload")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", type=_duration, help="an interval: 30s, 5m, 1h, at least 1s")
    when.add_argument("--cron", type=_cron, help="'0 2 * * *'; 6 fields: seconds first")
    add.add_argument("--timezone", default="UTC", help="IANA name for --cron (default UTC)")
    add.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    add.add_argument("--retain", action="store_true")
    add.add_argument(
        "--spread", type=_duration, default=timedelta(0), help="fire within this after each"
    )
    add.add_argument("--expire-after", type=_duration, help="an occurrence expires this late")
    add.add_argument(
        "--catch-up",
        choices=("all", "latest", "none"),
        default="latest",
        help="occurrences missed while no replica ran (default latest)",
    )
    for action, purpose in (
        ("remove", "delete a schedule and its occurrences not yet due"),
        ("enable", "enable a schedule (from now on: no catch-up for the time it was off)"),
        ("disable", "disable a schedule and drop its occurrences not yet due"),
    ):
        actions.add_parser(action, help=purpose).add_argument("name")


async def _schedule(url: str, args: argparse.Namespace) -> int:
    try:
        if args.action == "list":
            for item in await list_schedules(url):
                when = f"every {item.every}" if item.every is not None else f"cron {item.cron!r}"
                state = "enabled" if item.enabled else f"disabled ({item.disabled_reason or ''})"
                upcoming = item.next_fire_at.isoformat() if item.next_fire_at else "-"
                print(f"{item.name}\t{item.topic}\t{when} {item.timezone}\t{state}\t{upcoming}")
            return EXIT_OK
        if args.action == "add":
            await add_schedule(
                url,
                NewSchedule(
                    name=args.name,
                    topic=args.topic,
                    payload=args.payload,
                    every=args.every,
                    cron=args.cron,
                    timezone=args.timezone,
                    qos=args.qos,
                    retain=args.retain,
                    spread=args.spread,
                    expire_after=args.expire_after,
                    catch_up=args.catch_up,
                ),
            )
            log.info("schedule_added", schedule=args.name)
            return EXIT_OK
        if args.action == "remove":
            found = await remove_schedule(url, args.name)
        else:
            found = await set_schedule_enabled(url, args.name, enabled=args.action == "enable")
    except DatabaseError as exc:
        # A refused definition is the user's to fix: its reason on one line, no traceback.
        print(f"jobpub: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_FAILED
    if not found:
        print(f"jobpub: no schedule named {args.name!r}", file=sys.stderr)
        return EXIT_FAILED
    done = {"remove": "schedule_removed", "enable": "schedule_enabled"}
    log.info(done.get(args.action, "schedule_disabled"), schedule=args.name)
    return EXIT_OK


async def _pauses(settings: Settings, command: str, topic_filter: str, reason: str | None) -> int:
    url = settings.database_url.get_secret_value()
    try:
        if command == "pause":
            created = await pause(url, topic_filter, reason)
            log.info("paused" if created else "already_paused", filter=topic_filter)
        elif command == "resume":
            if not await resume(url, topic_filter):
                log.warning("not_paused", filter=topic_filter)
                return EXIT_FAILED
            log.info("resumed", filter=topic_filter)
        else:
            for row in await list_pauses(url):
                print(f"{row.filter}\t{_age(row.age_s)}\t{row.reason or ''}")
    except InvalidFilter as exc:
        print(f"jobpub: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    except DatabaseError as exc:
        log.exception("pauses_command_failed", command=command, error=str(exc))
        return EXIT_FAILED
    return EXIT_OK


def _age(seconds: float) -> str:
    """3d4h, 2h5m, 7m12s, 40s: the two largest units."""
    whole = int(seconds)
    days, hours, minutes = whole // 86400, whole // 3600 % 24, whole // 60 % 60
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{whole % 60}s"
    return f"{whole}s"


async def _requeue(settings: Settings, ids: list[int] | None) -> int:
    try:
        requeued = await requeue(settings.database_url.get_secret_value(), ids)
    except DatabaseError as exc:
        log.exception("requeue_failed", error=str(exc))
        return EXIT_FAILED
    log.info("requeued", count=len(requeued), ids=requeued[:100])
    if ids and len(requeued) < len(ids):
        missing = sorted(set(ids) - set(requeued))
        log.warning("requeue_skipped", ids=missing[:100], reason="not dead, or no such job")
    return EXIT_OK


async def _migrate(settings: Settings, wait: float) -> int:
    deadline = time.monotonic() + wait
    while True:
        try:
            applied = await migrate(settings.database_url.get_secret_value(), migrations.scripts())
        except DatabaseUnavailable as exc:
            if time.monotonic() >= deadline:
                log.exception("migrate_failed", error=str(exc))
                return EXIT_FAILED
            log.warning("migrate_waiting_for_database", error=str(exc))
            await asyncio.sleep(1.0)
            continue
        except DatabaseError as exc:  # refused, not unreachable: waiting will not help
            log.exception("migrate_failed", error=str(exc))
            return EXIT_FAILED
        log.info("migrated", applied=applied, up_to_date=not applied)
        break
    if settings.probe_topic:
        # Replicas connecting as jobpub_daemon may probe only the topic the owner allowed.
        try:
            await allow_probe_topic(settings.database_url.get_secret_value(), settings.probe_topic)
        except DatabaseError as exc:
            log.exception("probe_topic_not_allowed", topic=settings.probe_topic, error=str(exc))
            return EXIT_FAILED
        log.info("probe_topic_allowed", topic=settings.probe_topic)
    return EXIT_OK
