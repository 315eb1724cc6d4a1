"""/metrics, /healthz and /readyz over a minimal HTTP/1.1 responder.

Three GET routes with fixed answers need no web framework; one request per connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

import structlog

log = structlog.get_logger("jobpub.http")

# Every connection is one task: its request head is bounded in size and in time, so a
# client that sends nothing, or trickles, holds a task for seconds, not for ever.
MAX_REQUEST_HEAD = 8192  # bytes, request line and headers; longer gets 431
REQUEST_TIMEOUT = 5.0  # seconds to send the whole head, and again to take the answer


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Response]
_BAD_REQUEST = Response(HTTPStatus.BAD_REQUEST, b"bad request\n")
_HEAD_TOO_LARGE = Response(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"request too large\n")
_TIMED_OUT = Response(HTTPStatus.REQUEST_TIMEOUT, b"request timeout\n")


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        routes: dict[str, Route],
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._host = host
        self._port = port
        self._routes = routes
        self._request_timeout = request_timeout
        self.port: int | None = None  # the bound port (differs from `port` when that is 0)

    async def serve(self, stop: asyncio.Event) -> None:
        # `limit` caps the reader's buffer: readuntil raises LimitOverrunError past it.
        server = await asyncio.start_server(
            self._handle, self._host, self._port, limit=MAX_REQUEST_HEAD
        )
        self.port = server.sockets[0].getsockname()[1]
        log.info("http_listening", host=self._host, port=self.port)
        async with server:
            await stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method = ""
            try:
                async with asyncio.timeout(self._request_timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                response = _TIMED_OUT
            except asyncio.LimitOverrunError:
                response = _HEAD_TOO_LARGE
            else:
                method, response = self._respond(head)
            writer.write(_encode(response, with_body=method != "HEAD"))
            async with asyncio.timeout(self._request_timeout):
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, OSError):
            pass  # the client went away, or stopped reading: it gets nothing more
        finally:
            writer.close()

    def _respond(self, head: bytes) -> tuple[str, Response]:
        """The request's method and the answer to it."""
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(request_line) != 3 or not request_line[2].startswith("HTTP/1."):
            return "", _BAD_REQUEST
        method, target, _ = request_line
        route = self._routes.get(target.split("?", 1)[0])
        if route is None:
            return method, Response(HTTPStatus.NOT_FOUND, b"not found\n")
        if method not in ("GET", "HEAD"):
            return method, Response(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n")
        return method, route()


def _encode(response: Response, *, with_body: bool) -> bytes:
    """Status line, headers and (unless HEAD) body; HEAD gets GET's Content-Length."""
    status = HTTPStatus(response.status)
    allow = "Allow: GET, HEAD\r\n" if status == HTTPStatus.METHOD_NOT_ALLOWED else ""
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n{allow}Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + (response.body if with_body else b"")
