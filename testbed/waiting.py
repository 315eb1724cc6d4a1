"""Wait on a condition with a deadline; never a fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
import io
import time
from collections.abc import Awaitable, Callable
from pathlib import Path


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


async def eventually(
    condition: Callable[[], Awaitable[bool] | bool], timeout: float, what: str
) -> None:
    """Until `condition()` (a plain or an async predicate) is true, or fail at `timeout`."""
    deadline = time.monotonic() + timeout
    while not await _holds(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def logged(buffer: io.StringIO, text: str) -> Callable[[], Awaitable[bool]]:
    """A condition for `eventually`: `text` has been logged into `buffer`."""

    async def check() -> bool:
        return text in buffer.getvalue()

    return check


def in_file(path: Path, text: str, times: int) -> Callable[[], Awaitable[bool]]:
    """A condition for `eventually`: a service's log file holds `text` `times` times."""

    def count() -> int:
        return path.read_text(errors="replace").count(text) if path.exists() else 0

    async def check() -> bool:
        return await asyncio.to_thread(count) >= times

    return check


async def _holds(condition: Callable[[], Awaitable[bool] | bool]) -> bool:
    result = condition()
    return await result if inspect.isawaitable(result) else result
