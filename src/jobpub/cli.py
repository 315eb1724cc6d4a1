"""`jobpub migrate | run`: parse, build Settings once, map failures to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import structlog
from pydantic import ValidationError

from jobpub import __version__, app, logs, migrations
from jobpub.db.admin import migrate, requeue
from jobpub.errors import DatabaseError, DatabaseUnavailable
from jobpub.settings import Settings, SettingsFileError, describe_errors

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SETTINGS = 2

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

    if args.command == "migrate":
        return asyncio.run(_migrate(settings, args.wait))
    if args.command == "requeue":
        if not args.ids and not args.all:
            parser.error("requeue: give job ids, or --all for every dead job")
        return asyncio.run(_requeue(settings, args.ids or None))
    return asyncio.run(app.run(settings))


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
        return EXIT_OK
