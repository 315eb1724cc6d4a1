"""Fixtures on real services: PostgreSQL (a fresh database per test) and Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import structlog

from jobpub import logs, migrations
from jobpub.db.admin import migrate
from testbed.broker import Broker, start_broker
from testbed.daemon import Replica
from testbed.subscriber import Subscriber

PROJECT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get(
    "JOBPUB_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TEMPLATE = f"jobpub_template_{os.getpid()}"


def database_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A database with the schema migrated once; each test clones it (fast)."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
    asyncio.run(migrate(database_url(TEMPLATE), migrations.scripts()))
    yield TEMPLATE
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')


@contextlib.contextmanager
def fresh_database(prefix: str, template: str | None = None) -> Iterator[str]:
    """A new database (a copy of `template`, if given) for one test; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{copy}')
    yield database_url(name)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(template_database: str) -> Iterator[str]:
    """URL of a fresh, migrated database for this test only."""
    with fresh_database("jobpub_test", template_database) as url:
        yield url


@pytest.fixture
def empty_db_url() -> Iterator[str]:
    """URL of a fresh database with no schema."""
    with fresh_database("jobpub_empty") as url:
        yield url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One Mosquitto for the session, on a free port, with the project's no-drop config."""
    with start_broker(tmp_path_factory.mktemp("broker")) as running:
        yield running


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto for this test alone, which the test may stop and start."""
    with start_broker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    """An independent subscriber (paho-mqtt, not jobpub's code) to this test's topics."""
    with Subscriber(broker.port, f"t{uuid.uuid4().hex[:10]}") as running:
        yield running


@pytest.fixture
def info_logs() -> Iterator[io.StringIO]:
    """Logging as `jobpub run` sets it up (JSON, info level), into a buffer."""
    buffer = io.StringIO()
    logs.configure("json", "info", stream=buffer)
    yield buffer
    structlog.reset_defaults()


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    """`jobpub run` processes a test starts (append them here): closed after it."""
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.close()
