"""A throwaway PostgreSQL server with TLS and password authentication.

The shared test server trusts local connections and has no TLS, so what jobpub does
with `sslmode` and a wrong password is tested against one of these instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from testbed.broker import free_port
from testbed.tls import make_certificates

USER, PASSWORD, DATABASE = "publisher", "db-s3cret", "jobs"


@dataclass(frozen=True)
class PostgresServer:
    port: int
    ca_file: Path
    socket_dir: Path
    log: Path

    def url(self, password: str = PASSWORD, **options: str) -> str:
        query = "&".join(f"{key}={value}" for key, value in options.items())
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{DATABASE}?{query}"

    @property
    def admin_url(self) -> str:
        """The superuser over the Unix socket, trusted: for setting up."""
        return f"postgresql:///postgres?host={self.socket_dir}&port={self.port}&user=postgres"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version)
    path = found[-1] if found else shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: install PostgreSQL's server package")
    return path


def _version(path: str) -> int:
    return int(Path(path).parents[1].name)


def _as_server_user(*command: str) -> None:
    """PostgreSQL refuses to run as root: run as `postgres` then."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *command], check=True, capture_output=True)


@contextlib.contextmanager
def start_postgres() -> Iterator[PostgresServer]:
    """initdb, TLS on, scram passwords over TCP; a `publisher` role owning `jobs`."""
    # Not under pytest's tmp_path: as root, that is private to root, and the server
    # runs as `postgres`.
    with tempfile.TemporaryDirectory(prefix="jobpub-pg-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o777)
        with _running(directory) as server:
            yield server


@contextlib.contextmanager
def _running(directory: Path) -> Iterator[PostgresServer]:
    certs = make_certificates(directory / "certs")
    data, sockets = directory / "data", directory / "sockets"
    sockets.mkdir()
    sockets.chmod(0o777)
    _as_server_user(_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                    "--no-sync")  # fmt: skip
    key = data / "server.key"
    shutil.copy(certs.server_key, key)
    shutil.copy(certs.server_cert, data / "server.crt")
    if os.geteuid() == 0:
        shutil.chown(key, "postgres")
        shutil.chown(data / "server.crt", "postgres")
    key.chmod(0o600)
    port = free_port()
    (data / "postgresql.auto.conf").write_text(
        f"port = {port}\nlisten_addresses = '127.0.0.1'\n"
        f"unix_socket_directories = '{sockets}'\n"
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
        "fsync = off\nsynchronous_commit = off\n"
    )
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
    )
    pg_ctl = _bin("pg_ctl")
    log = directory / "server.log"
    _as_server_user(pg_ctl, "-D", str(data), "-w", "-l", str(log), "start")
    server = PostgresServer(port, certs.ca, sockets, log)
    try:
        subprocess.run(
            ["psql", server.admin_url, "-v", "ON_ERROR_STOP=1", "-c",
             f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'", "-c",
             f"CREATE DATABASE {DATABASE} OWNER {USER}"],
            check=True, capture_output=True,
        )  # fmt: skip
        yield server
    finally:
        _as_server_user(pg_ctl, "-D", str(data), "-m", "immediate", "stop")


@contextlib.contextmanager
def start_default_postgres() -> Iterator[str]:
    """A throwaway server on PostgreSQL's own defaults (autovacuum on, fsync on), trusting
    TCP from 127.0.0.1; its superuser URL. For a bench that needs what a deployment runs:
    the shared test server turns autovacuum off."""
    with tempfile.TemporaryDirectory(prefix="jobpub-pg-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o777)
        data, sockets = directory / "data", directory / "sockets"
        sockets.mkdir()
        sockets.chmod(0o777)
        _as_server_user(_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                        "--no-sync")  # fmt: skip
        port = free_port()
        (data / "postgresql.auto.conf").write_text(
            f"port = {port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{sockets}'\n"
        )
        (data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        pg_ctl = _bin("pg_ctl")
        _as_server_user(pg_ctl, "-D", str(data), "-w", "-l", str(directory / "server.log"),
                        "start")  # fmt: skip
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            _as_server_user(pg_ctl, "-D", str(data), "-m", "fast", "stop")
