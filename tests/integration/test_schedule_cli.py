"""`jobpub schedule list|add|remove|enable|disable` on real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest

from jobpub.cli import EXIT_FAILED, EXIT_OK, main
from jobpub.scheduling.durations import parse_duration


@pytest.fixture
def cli_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("JOBPUB_DATABASE_URL", db_url)
    monkeypatch.setenv("JOBPUB_LOG_FORMAT", "json")
    return db_url


def one(db_url: str, sql: str) -> tuple[Any, ...] | None:
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql).fetchone()


def test_add_list_disable_enable_remove(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schedule", "add", "heartbeat", "devices/all/ping", "{}", "--every", "30s"]) == 0
    argv = ["schedule", "add", "nightly", "reports/run", "{}", "--cron", "0 2 * * *"]
    options = ["--timezone", "Europe/Berlin", "--qos", "2", "--retain", "--spread", "1m"]
    more = ["--expire-after", "1h", "--catch-up", "none"]
    assert main([*argv, *options, *more]) == EXIT_OK
    assert one(
        cli_env,
        "SELECT cron, timezone, qos, retain, spread, expire_after, catch_up FROM schedules"
        " WHERE name = 'nightly'",
    ) == ("0 2 * * *", "Europe/Berlin", 2, True, timedelta(minutes=1), timedelta(hours=1), "none")
    assert one(cli_env, "SELECT every FROM schedules WHERE name = 'heartbeat'") == (
        timedelta(seconds=30),
    )
    capsys.readouterr()
    assert main(["schedule", "list"]) == EXIT_OK
    listed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in listed] == ["heartbeat", "nightly"]
    assert "every 0:00:30 UTC" in listed[0]
    assert main(["schedule", "disable", "nightly"]) == EXIT_OK
    assert one(cli_env, "SELECT enabled FROM schedules WHERE name = 'nightly'") == (False,)
    assert main(["schedule", "enable", "nightly"]) == EXIT_OK
    assert one(cli_env, "SELECT enabled FROM schedules WHERE name = 'nightly'") == (True,)
    assert main(["schedule", "remove", "nightly"]) == EXIT_OK
    assert one(cli_env, "SELECT count(*) FROM schedules") == (1,)
    assert main(["schedule", "remove", "nightly"]) == EXIT_FAILED, "no such schedule"


def test_refused_definitions_fail_with_the_reason(
    cli_env: str, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["schedule", "add", "bad", "a/b", "x", "--cron", "61 * * * *"])
    assert exited.value.code == 2
    assert "invalid cron expression" in capfd.readouterr().err
    argv = ["schedule", "add", "bad", "a/b", "x", "--cron", "0 2 * * *", "--timezone", "Mars"]
    assert main(argv) == EXIT_FAILED
    assert capfd.readouterr().err == (
        "jobpub: adding schedule 'bad': schedules: unknown time zone \"Mars\"\n"
    )
    assert one(cli_env, "SELECT count(*) FROM schedules") == (0,)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("250ms", 0.25), ("7", 7)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5x", "1h 30m", "m5", "-"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
