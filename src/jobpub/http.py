"""/metrics, /healthz and /readyz over a minimal HTTP/1.1 responder.

Three GET routes with fixed answers need no web framework; one request per connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("jobpub.http")

MAX_REQUEST_HEAD = 8192


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Response]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HttpServer:
    def __init__(self, host: str, port: int, routes: dict[str, Route]) -> None:
        self._host = host
        self._port = port
        self._routes = routes
        self.port: int | None = None  # the bound port (differs from `port` when that is 0)

    async def serve(self, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self._handle, self._host, self._port)
        self.port = server.sockets[0].getsockname()[1]
        log.info("http_listening", host=self._host, port=self.port)
        async with server:
            await stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            response = self._respond(head[:MAX_REQUEST_HEAD])
            writer.write(
                f"HTTP/1.1 {response.status} {_REASONS[response.status]}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\nConnection: close\r\n\r\n".encode()
                + response.body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that went away or sent nonsense gets nothing
        finally:
            writer.close()

    def _respond(self, head: bytes) -> Response:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(request_line) < 2:
            return Response(405, b"bad request\n")
        method, target = request_line[0], request_line[1]
        route = self._routes.get(target.split("?", 1)[0])
        if route is None:
            return Response(404, b"not found\n")
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n")
        return route()
