"""A real Mosquitto on a free port, configured from the project's deploy config."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "mosquitto.conf"
# Settings the tests need to own (where to listen, where to keep state, logging).
_REPLACED = ("listener", "persistence_location", "log_dest", "log_type", "allow_anonymous")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Broker:
    directory: Path
    port: int
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        kept = [
            line
            for line in PROJECT_CONFIG.read_text().splitlines()
            if line.split(" ", 1)[0] not in _REPLACED
        ]
        config = self.directory / "mosquitto.conf"
        config.write_text(
            "\n".join(
                [
                    *kept,
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    f"persistence_location {self.directory}/",
                    f"log_dest file {self.directory}/mosquitto.log",
                    # As root, mosquitto would switch to a user that cannot reach pytest's tmp.
                    "user root" if os.geteuid() == 0 else "",
                    self.extra_config,
                ]
            )
            + "\n"
        )
        self.process = subprocess.Popen([binary, "-c", str(config)])
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.directory / "mosquitto.log"
                raise RuntimeError(
                    f"mosquitto did not start: {log.read_text() if log.exists() else ''}"
                )
            time.sleep(0.02)

    def stop(self, *, hard: bool = False) -> None:
        if self.process is None:
            return
        if hard:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None


@contextlib.contextmanager
def start_broker(directory: Path, extra_config: str = "") -> Iterator[Broker]:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o777)  # started as root, mosquitto drops to its own user
    broker = Broker(directory, free_port(), extra_config)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
