"""A real PgBouncer (Debian's package) in front of the test PostgreSQL, on a free port."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from testbed.broker import free_port, port_open


@dataclass(frozen=True)
class PgBouncer:
    port: int
    log: Path

    def url(self, database_url: str) -> str:
        """`database_url` (user and database kept) routed through this PgBouncer."""
        parts = urlsplit(database_url)
        user = parts.username or "postgres"
        return f"postgresql://{user}@127.0.0.1:{self.port}{parts.path}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def start_pgbouncer(
    server_host: str = "127.0.0.1", server_port: int = 5432, pool_mode: str = "transaction"
) -> Iterator[PgBouncer]:
    """PgBouncer trusting local clients, any database name passed through to the server."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise RuntimeError("pgbouncer not found: install Debian's `pgbouncer` package")
    # Not under pytest's tmp_path: as root, that is private to root, and PgBouncer refuses
    # to run as root (it runs as `postgres` then).
    with tempfile.TemporaryDirectory(prefix="jobpub-pgbouncer-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o777)
        port = free_port()
        log = directory / "pgbouncer.log"
        (directory / "userlist.txt").write_text('"postgres" ""\n')
        config = directory / "pgbouncer.ini"
        config.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host={server_host} port={server_port}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {port}",
                    "unix_socket_dir =",
                    f"pool_mode = {pool_mode}",
                    "auth_type = trust",
                    f"auth_file = {directory / 'userlist.txt'}",
                    f"logfile = {log}",
                    "max_client_conn = 200",
                    "default_pool_size = 20",
                    *(["user = postgres"] if os.geteuid() == 0 else []),
                ]
            )
            + "\n"
        )
        output = (directory / "pgbouncer.out").open("wb")  # a file: a full pipe would stall it
        process = subprocess.Popen([binary, str(config)], stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while not port_open(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start: {_failure(process, directory)}")
                time.sleep(0.02)
            yield PgBouncer(port, log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            output.close()


def _failure(process: subprocess.Popen[bytes], directory: Path) -> str:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    return (directory / "pgbouncer.out").read_text(errors="replace")
