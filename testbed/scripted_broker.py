"""A fake MQTT broker on a real socket that does only what a test scripts.

It answers CONNECT with the CONNACK it was given (or chose, given the CONNECT) and
PINGREQ with PINGRESP; every other packet is recorded and left unanswered unless the
test sends an answer. For what Mosquitto cannot be made to do on demand, such as never
acknowledging, refusing MQTT 5, or hanging up right after accepting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

# What to answer a CONNECT with: fixed bytes, or chosen from the CONNECT packet.
ConnAckScript = bytes | Callable[[bytes], bytes]


def protocol_level(connect: bytes) -> int:
    """The protocol level in a CONNECT packet: 4 for MQTT 3.1.1, 5 for MQTT 5."""
    length_end = 2
    while connect[length_end - 1] & 0x80:
        length_end += 1
    return connect[length_end + 6]  # after the 2-byte length and b"MQTT"


class ScriptedBroker:
    def __init__(self, connack: ConnAckScript, *, after_connack: bytes | None = None) -> None:
        self._connack = connack
        # If set: written right after CONNACK, then the broker hangs up (b"": just hangs up).
        self._after_connack = after_connack
        self.connects: list[bytes] = []  # every CONNECT, whole, in order
        self.packets: list[bytes] = []  # every packet after CONNECT, whole, in order
        self.pings = 0
        self._writer: asyncio.StreamWriter | None = None
        self._changed = asyncio.Condition()
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    packet = await _read_packet(reader)
                    kind = packet[0] >> 4
                    if kind == 1:  # CONNECT
                        self.connects.append(packet)
                        connack = self._connack
                        writer.write(connack(packet) if callable(connack) else connack)
                        if self._after_connack is not None:
                            writer.write(self._after_connack)
                            await writer.drain()
                            async with self._changed:
                                self._changed.notify_all()
                            break
                    elif kind == 12:  # PINGREQ
                        self.pings += 1
                        writer.write(b"\xd0\x00")
                    elif kind == 14:  # DISCONNECT
                        break
                    else:
                        self.packets.append(packet)
                    async with self._changed:
                        self._changed.notify_all()
        finally:  # also when the test's loop cancels this handler
            writer.close()

    async def send(self, data: bytes) -> None:
        assert self._writer is not None, "no client connected"
        self._writer.write(data)
        await self._writer.drain()

    async def hang_up(self) -> None:
        """Close the client's connection, as a broker does after a bad packet."""
        assert self._writer is not None, "no client connected"
        self._writer.close()
        await self._writer.wait_closed()

    async def wait_for(self, what: str, condition: object, timeout: float = 5) -> None:
        """Until `condition()` holds (checked on every packet), or fail at `timeout`."""
        assert callable(condition)
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(condition)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


@contextlib.asynccontextmanager
async def scripted_broker(
    connack: ConnAckScript, *, after_connack: bytes | None = None
) -> AsyncIterator[ScriptedBroker]:
    broker = ScriptedBroker(connack, after_connack=after_connack)
    server = await asyncio.start_server(broker._serve, "127.0.0.1", 0)
    broker.port = server.sockets[0].getsockname()[1]
    async with server:
        yield broker
        server.close()


async def _read_packet(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(1)
    length_bytes = b""
    length = shift = 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length_bytes += bytes((byte,))
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return header + length_bytes + await reader.readexactly(length)
