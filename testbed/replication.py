"""A primary and its streaming standby: two throwaway PostgreSQL clusters for failover.

The primary comes from initdb; the standby is a `pg_basebackup -R` copy of it that
streams the primary's WAL asynchronously, as Patroni and CloudNativePG replicate by
default. Both trust loopback connections (they live for one test or bench run) and
are stopped, and their directory removed, however the run ends.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, LiteralString

import psycopg

from testbed.broker import free_port
from testbed.waiting import wait_until

# The issue names PostgreSQL 15: the machine's server, and the version the tests run on.
PG_BIN: Final = Path("/usr/lib/postgresql/15/bin")
REPLICATION_ROLE: Final = "replicator"
START_TIMEOUT: Final = 60.0

# The role pg_basebackup and the standby's WAL receiver log in as: replication only.
CREATE_REPLICATION_ROLE: Final[LiteralString] = "CREATE ROLE replicator REPLICATION LOGIN"
# Every connected standby has replayed up to the given LSN (none connected: false).
STANDBY_REPLAYED: Final[LiteralString] = """
SELECT coalesce(bool_and(replay_lsn >= %(lsn)s::pg_lsn), false) FROM pg_stat_replication
"""
# What the primary has written so far: a standby that replayed this far has every commit.
CURRENT_LSN: Final[LiteralString] = "SELECT pg_current_wal_lsn()::text"
# A promoted standby leaves recovery and then accepts writes.
IN_RECOVERY: Final[LiteralString] = "SELECT pg_is_in_recovery()"


@dataclass(frozen=True)
class Cluster:
    name: str
    port: int
    data: Path
    log: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass(frozen=True)
class ReplicationPair:
    primary: Cluster
    standby: Cluster

    def url(self, database: str = "postgres") -> str:
        """Both servers in one libpq URL: a connection goes to whichever accepts writes."""
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
            f"/{database}?target_session_attrs=read-write"
        )

    def wait_replayed(self, timeout: float) -> str:
        """Until the standby has replayed all the primary has written by now; that LSN."""
        with psycopg.connect(self.primary.url(), autocommit=True) as conn:
            row = conn.execute(CURRENT_LSN).fetchone()
            assert row is not None
            lsn = str(row[0])

            def replayed() -> bool:
                done = conn.execute(STANDBY_REPLAYED, {"lsn": lsn}).fetchone()
                return bool(done and done[0])

            wait_until(replayed, timeout, f"the standby to replay up to {lsn}")
        return lsn

    def stop_primary(self, mode: Literal["fast", "immediate"]) -> None:
        """`fast`: a planned switchover; sessions are ended and the WAL senders stream
        everything to the standby before the server exits. `immediate`: a crash; no
        checkpoint, and WAL not yet sent is gone with the server."""
        _pg_ctl(self.primary, "stop", "-w", "-m", mode)

    def promote_standby(self) -> None:
        """`pg_ctl promote`, waited on until the standby accepts writes."""
        _pg_ctl(self.standby, "promote", "-w")
        with psycopg.connect(self.standby.url(), autocommit=True) as conn:

            def writable() -> bool:
                row = conn.execute(IN_RECOVERY).fetchone()
                return row is not None and row[0] is False

            wait_until(writable, START_TIMEOUT, "the promoted standby to leave recovery")


@contextlib.contextmanager
def start_replication_pair(*, durable: bool = False) -> Iterator[ReplicationPair]:
    """A primary and a streaming standby on free ports, both stopped at the end.

    `durable`: fsync on, as a production server runs (for measurements); off, the
    tests do not wait on the disk.
    """
    # Not under pytest's tmp_path: as root, that is private to root, and the servers
    # run as `postgres`.
    with tempfile.TemporaryDirectory(prefix="jobpub-replication-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o777)
        sockets = directory / "sockets"
        sockets.mkdir()
        sockets.chmod(0o777)
        primary_port, standby_port = _two_free_ports()
        primary = Cluster("primary", primary_port, directory / "primary", directory / "primary.log")
        standby = Cluster("standby", standby_port, directory / "standby", directory / "standby.log")
        try:
            _init_primary(primary, sockets, durable=durable)
            _pg_ctl(primary, "start", "-w", "-l", str(primary.log))
            with psycopg.connect(primary.url(), autocommit=True) as conn:
                conn.execute(CREATE_REPLICATION_ROLE)
            _clone_standby(primary, standby)
            _pg_ctl(standby, "start", "-w", "-l", str(standby.log))
            pair = ReplicationPair(primary, standby)
            pair.wait_replayed(START_TIMEOUT)  # streaming, not only started
            yield pair
        finally:
            for cluster in (standby, primary):
                if (cluster.data / "postmaster.pid").exists():
                    with contextlib.suppress(subprocess.CalledProcessError):
                        _pg_ctl(cluster, "stop", "-w", "-m", "immediate")


def _init_primary(primary: Cluster, sockets: Path, *, durable: bool) -> None:
    _as_server_user(str(PG_BIN / "initdb"), "-D", str(primary.data), "-U", "postgres",
                    "-A", "trust", "--no-sync")  # fmt: skip
    (primary.data / "postgresql.auto.conf").write_text(
        f"port = {primary.port}\nlisten_addresses = '127.0.0.1'\n"
        f"unix_socket_directories = '{sockets}'\n"
        # Streaming replication; the standby reads WAL kept here if it falls behind.
        "wal_level = replica\nmax_wal_senders = 4\nwal_keep_size = '512MB'\n"
        "hot_standby = on\n"
        f"fsync = {'on' if durable else 'off'}\n"
    )
    (primary.data / "pg_hba.conf").write_text(
        "local all all trust\n"
        "host all all 127.0.0.1/32 trust\n"
        f"host replication {REPLICATION_ROLE} 127.0.0.1/32 trust\n"
    )


def _clone_standby(primary: Cluster, standby: Cluster) -> None:
    """A base backup that streams its own WAL; -R writes standby.signal and primary_conninfo."""
    _as_server_user(str(PG_BIN / "pg_basebackup"), "-D", str(standby.data), "-h", "127.0.0.1",
                    "-p", str(primary.port), "-U", REPLICATION_ROLE, "-R", "-X", "stream",
                    "--checkpoint=fast", "--no-sync")  # fmt: skip
    # The copied settings name the primary's port; the later line wins.
    with (standby.data / "postgresql.auto.conf").open("a") as settings:
        settings.write(f"port = {standby.port}\n")


def _pg_ctl(cluster: Cluster, *arguments: str) -> None:
    _as_server_user(str(PG_BIN / "pg_ctl"), "-D", str(cluster.data), *arguments)


def _as_server_user(*command: str) -> None:
    """PostgreSQL refuses to run as root: run as `postgres` then."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *command], check=True, capture_output=True)


def _two_free_ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second
