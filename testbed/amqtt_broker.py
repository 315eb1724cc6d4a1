"""amqtt, a second broker implementation that speaks only MQTT 3.1.1, on a free port.

It runs in a process of its own (`python -m testbed.amqtt_broker PORT`), so a test's
event loop and the broker's never wait on each other, and killing it is a real loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from testbed.broker import free_port, port_open


@dataclass
class AmqttBroker:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@contextlib.contextmanager
def start_amqtt_broker(log_path: Path) -> Iterator[AmqttBroker]:
    port = free_port()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "testbed.amqtt_broker", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
        )
    try:
        deadline = time.monotonic() + 20
        while not port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"amqtt did not start: {log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        yield AmqttBroker(port, process)
    finally:
        process.kill()
        process.wait(timeout=10)


async def _serve(port: int) -> None:
    # Imported only in the broker's own process: pytest's warnings-as-errors would
    # otherwise judge amqtt's import-time deprecations.
    from amqtt.broker import Broker  # type: ignore[import-untyped]  # noqa: PLC0415

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
