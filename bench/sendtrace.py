"""When a replica wrote its PUBLISH packets and read the broker's acks, by `strace`.

A diagnostic for `python -m bench schedules --trace`: the replica's own metrics say
when a job was handed to its MQTT connection, not when its bytes left or its PUBACK
came back. `strace -yy` names each socket's peer, so the broker connection's write
and read calls can be told from the database's. Tracing stops the replica at every
system call: its figures show the shape of a run (which step waits for which), not
what an untraced run does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

# "1765000000.123456 write(7<TCP:[127.0.0.1:40000->127.0.0.1:1883]>, ...) = 5012"
_CALL = re.compile(
    r"^(?:\d+\s+)?(?P<at>\d+\.\d+) (?P<call>\w+)\(\d+<TCP:\[[^\]]*->[^\]]*:(?P<port>\d+)\]>"
    r".*\) = (?P<bytes>\d+)$"
)
_WRITES = frozenset({"write", "writev", "sendto", "sendmsg"})
_READS = frozenset({"read", "readv", "recvfrom", "recvmsg"})


class SendTrace:
    """`strace` attached to one process until `stop`; then its broker socket's calls."""

    def __init__(self, pid: int, broker_port: int, path: Path) -> None:
        binary = shutil.which("strace")
        if binary is None:
            raise RuntimeError("--trace needs strace (apt-get install strace)")
        self.path = path
        self._broker_port = broker_port
        self._process = subprocess.Popen(
            [binary, "-f", "-ttt", "-yy", "-o", str(path), "-p", str(pid),
             "-e", "trace=" + ",".join(sorted(_WRITES | _READS))],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
        """(time.time(), bytes) of each write to and each read from the broker."""
        self._process.terminate()
        self._process.wait(timeout=10)
        return broker_calls(self.path.read_text(), self._broker_port)


def broker_calls(
    text: str, broker_port: int
) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
    """(time.time(), bytes) of each write to and each read from `broker_port`, from
    `strace -f -ttt -yy` output; other sockets and unfinished calls are left out."""
    writes: list[tuple[float, int]] = []
    reads: list[tuple[float, int]] = []
    port = str(broker_port)
    for line in text.splitlines():
        found = _CALL.match(line)
        if found is None or found["port"] != port:
            continue
        call = (float(found["at"]), int(found["bytes"]))
        if found["call"] in _WRITES:
            writes.append(call)
        elif found["call"] in _READS:
            reads.append(call)
    return writes, reads


def byte_percentiles(calls: list[tuple[float, int]], origin: float) -> dict[str, float]:
    """Milliseconds after `origin` of the first call, and by which 50/95/99/100% of
    the bytes had passed.

    The burst's packets are all alike (same topic length, one user property), so a
    share of the bytes is that share of the messages (of the PUBACKs, for reads).
    """
    total = sum(size for _, size in calls)
    marks = [0.5, 0.95, 0.99, 1.0]
    result: dict[str, float] = {}
    if calls:
        result["first"] = round((min(calls)[0] - origin) * 1000, 1)
    passed = 0
    for at, size in sorted(calls):
        passed += size
        while marks and passed >= marks[0] * total:
            result[f"p{round(marks.pop(0) * 100)}"] = round((at - origin) * 1000, 1)
    return result
