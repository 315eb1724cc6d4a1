"""The replica's HTTP responder on a real socket, spoken to byte by byte."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from jobpub.http import MAX_REQUEST_HEAD, HttpServer, Response
from jobpub.metrics import CONTENT_TYPE, Metrics
from testbed.waiting import eventually

REQUEST_TIMEOUT = 0.3  # short, so the tests of slow clients finish fast


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def port(metrics: Metrics) -> AsyncIterator[int]:
    """A server with the /metrics route as `jobpub run` wires it; its bound port."""
    server = HttpServer(
        "127.0.0.1",
        0,
        {"/metrics": lambda: Response(200, metrics.render(), CONTENT_TYPE)},
        request_timeout=REQUEST_TIMEOUT,
    )
    stop = asyncio.Event()
    serving = asyncio.create_task(server.serve(stop), name="http-server-under-test")
    await eventually(lambda: server.port is not None, 5, "the server to listen")
    assert server.port is not None
    yield server.port
    stop.set()
    await serving


async def exchange(port: int, request: bytes, *, close_write: bool = False) -> bytes:
    """Send `request` and read the answer until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        if close_write:
            writer.write_eof()
        async with asyncio.timeout(5):  # well past REQUEST_TIMEOUT: a hung server fails here
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def parse(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    """Status line, headers (lower-cased names) and body of a raw HTTP/1.1 answer."""
    head, separator, body = answer.partition(b"\r\n\r\n")
    assert separator, f"no end of head in {answer!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_line, headers, body


@pytest.mark.parametrize(
    "request_line",
    [
        b"NONSENSE",
        b"GET",
        b"GET /metrics",
        b"GET /metrics SPDY/3",
        b"GET  /metrics HTTP/1.1",
        b"\x00\xff\x16\x03\x01",
        b"",
    ],
)
async def test_a_malformed_request_gets_400_with_a_proper_status_line(
    port: int, request_line: bytes
) -> None:
    status_line, headers, body = parse(await exchange(port, request_line + b"\r\n\r\n"))
    assert status_line == "HTTP/1.1 400 Bad Request"
    assert headers["content-length"] == str(len(body))
    assert headers["connection"] == "close"


async def test_head_gets_the_headers_get_would_and_no_body(port: int, metrics: Metrics) -> None:
    get_status, get_headers, get_body = parse(
        await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: replica\r\n\r\n")
    )
    head_status, head_headers, head_body = parse(
        await exchange(port, b"HEAD /metrics HTTP/1.1\r\nHost: replica\r\n\r\n")
    )
    assert get_status == head_status == "HTTP/1.1 200 OK"
    assert get_body == metrics.render()
    assert head_headers == get_headers
    assert head_headers["content-length"] == str(len(get_body))
    assert head_headers["content-type"] == CONTENT_TYPE
    assert head_body == b""


async def test_another_method_gets_405_naming_the_allowed_ones(port: int) -> None:
    status_line, headers, _ = parse(await exchange(port, b"POST /metrics HTTP/1.1\r\n\r\n"))
    assert status_line == "HTTP/1.1 405 Method Not Allowed"
    assert headers["allow"] == "GET, HEAD"


async def test_an_unknown_path_gets_404(port: int) -> None:
    status_line, _, _ = parse(await exchange(port, b"GET /nowhere HTTP/1.1\r\n\r\n"))
    assert status_line == "HTTP/1.1 404 Not Found"


@pytest.mark.parametrize(
    "partial_head", [b"", b"GET /metrics HTTP/1.1\r\nHost: replica\r\n"], ids=["nothing", "trickle"]
)
async def test_a_client_that_never_finishes_its_request_is_cut_off(
    port: int, partial_head: bytes
) -> None:
    silent = asyncio.create_task(exchange(port, partial_head), name="silent-client")
    # The silent client holds no one else up while it waits ...
    status_line, _, _ = parse(await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n"))
    assert status_line == "HTTP/1.1 200 OK"
    # ... and the server answers it 408 and closes after REQUEST_TIMEOUT, well within
    # exchange's own 5 s bound.
    status_line, _, _ = parse(await silent)
    assert status_line == "HTTP/1.1 408 Request Timeout"


async def test_a_request_head_over_the_limit_gets_431(port: int) -> None:
    padding = b"X-Padding: " + b"x" * MAX_REQUEST_HEAD + b"\r\n"
    status_line, _, _ = parse(await exchange(port, b"GET /metrics HTTP/1.1\r\n" + padding))
    assert status_line == "HTTP/1.1 431 Request Header Fields Too Large"


async def test_a_client_that_hangs_up_early_gets_nothing_and_the_server_carries_on(
    port: int,
) -> None:
    assert await exchange(port, b"GET /metr", close_write=True) == b""
    status_line, _, _ = parse(await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n"))
    assert status_line == "HTTP/1.1 200 OK"
