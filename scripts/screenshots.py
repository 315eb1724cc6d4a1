"""Screenshots of the dashboard for docs/web.md and the README, against seeded data.

    .venv/bin/python scripts/screenshots.py   (PostgreSQL as for the tests; Chromium installed)

Creates a database of its own (dropped at the end), seeds an hour of history, starts a
real `jobpub web` and photographs its main pages with the browser tests' Selenium setup.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from jobpub import migrations  # noqa: E402
from jobpub.db.admin import migrate  # noqa: E402
from testbed.waiting import wait_until  # noqa: E402
from tests.browser.chrome import chrome, web_process  # noqa: E402

ADMIN_URL = os.environ.get(
    "JOBPUB_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TOKEN = "screenshots-token-0123456789"  # noqa: S105 - its own throwaway server
OUT = PROJECT / "docs" / "img"

SEED = [
    # An hour of published rows: a rate that rises and falls, lag of a few milliseconds.
    """INSERT INTO jobs (topic, payload, fire_at, processed, processed_at, created_at)
       SELECT 'home/sensor/' || (i % 40), '{"read": true}', t, true,
              t + make_interval(secs => 0.002 + (i % 7) / 1000.0), t - interval '1 hour'
       FROM generate_series(1, 60 * 900) i,
            LATERAL (SELECT now() - make_interval(secs => 3600.0 * (1 - i / (60.0 * 900))
                     + 20 * sin(i / 900.0))) AS f(t)
       WHERE random() < 0.35 + 0.3 * sin(i / 5000.0) ^ 2""",
    # Pending: a small due backlog and the day ahead.
    """INSERT INTO jobs (topic, payload, fire_at)
       SELECT 'home/valve/' || (i % 12), '{"open": ' || (i % 2 = 0) || '}',
              now() + make_interval(mins => i * 7)
       FROM generate_series(1, 200) i""",
    """INSERT INTO jobs (topic, payload, fire_at)
       SELECT 'devices/reminder/' || i, 'Time for your 09:00 check',
              now() - make_interval(secs => i)
       FROM generate_series(1, 42) i""",
    # Dead rows with their reasons.
    """INSERT INTO jobs (topic, payload, fire_at, attempts, last_error, failed_at, dedupe_key,
                        content_type, user_properties, expires_at)
       SELECT 'home/door/' || i, '{"lock": true}', now() - make_interval(mins => 50 - i), 25,
              'broker refused: 0x87 not authorized', now() - make_interval(mins => 30 - i),
              'door-' || i || '-lock', 'application/json', '{"site": "north"}',
              now() + interval '6 hours'
       FROM generate_series(1, 5) i""",
    """INSERT INTO schedules (name, topic, payload, every) VALUES
       ('heartbeat', 'devices/ping', 'ping', interval '30 seconds')""",
    """INSERT INTO schedules (name, topic, payload, cron, timezone, spread) VALUES
       ('morning-valves', 'home/valve/all', '{"open": true}', '0 6 * * *', 'Europe/Berlin',
        interval '2 minutes'),
       ('weekly-report', 'reports/weekly', 'go', '0 9 * * 1', 'America/New_York', interval '0')""",
    """INSERT INTO pauses (filter, reason) VALUES
       ('devices/+/valve/#', 'valve firmware rollout'), ('reports/#', NULL)""",
    # Three live replicas and one killed a minute ago (no replica runs here to remove it).
    """INSERT INTO jobpub_replicas (id, host, version, partition, started_at, heartbeat_at)
       SELECT gen_random_uuid(), 'publisher-' || i, '1.4.0', '0/1',
              now() - make_interval(hours => i), now() - make_interval(secs => i * 0.8)
       FROM generate_series(1, 3) i
       UNION ALL
       SELECT gen_random_uuid(), 'publisher-4', '1.4.0', '0/1', now() - interval '5 hours',
              now() - interval '62 seconds'""",
    "ANALYZE jobs",
]


def main() -> None:
    name = f"jobpub_screenshots_{uuid.uuid4().hex[:8]}"
    base, _, _ = ADMIN_URL.rpartition("/")
    url = f"{base}/{name}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        asyncio.run(migrate(url, migrations.scripts()))
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in SEED:
                conn.execute(statement)
            row = conn.execute(
                "SELECT id FROM jobs WHERE failed_at IS NOT NULL ORDER BY id LIMIT 1"
            ).fetchone()
            if row is None:
                raise SystemExit("seeding made no dead job")
            dead_job = row[0]
        shoot(url, dead_job)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def shoot(url: str, dead_job: int) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.mkdtemp()) / "web.log"
    with web_process(url, log, web_token=TOKEN) as web, chrome(1280, 860) as browser:
        browser.get(web + "/login")
        browser.find_element("id", "token").send_keys(TOKEN)
        browser.find_element("id", "login").click()
        wait_until(lambda: browser.current_url == web + "/", 10, "the overview after login")
        pages = {
            "overview": "/",
            "jobs": "/jobs?state=pending",
            "job": f"/jobs/{dead_job}",
            "schedules": "/schedules",
            "dead": "/dead",
            "pauses": "/pauses",
        }
        for name, path in pages.items():
            browser.get(web + path)
            browser.save_screenshot(str(OUT / f"web-{name}.png"))
        browser.set_window_size(390, 844)
        browser.get(web + "/")
        browser.save_screenshot(str(OUT / "web-overview-phone.png"))
    print(f"screenshots in {OUT}")


if __name__ == "__main__":
    main()
