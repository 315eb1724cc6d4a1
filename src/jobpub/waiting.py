"""Waiting on an event with a deadline, without leaving tasks behind."""

from __future__ import annotations

import asyncio


async def wait_for_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until `event` is set or `timeout` seconds pass; True if it was set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def wait_for_any(events: tuple[asyncio.Event, ...], timeout: float | None) -> bool:
    """Wait until any of `events` is set or `timeout` passes; True if one was set.

    The waiter tasks live only inside this call and are cancelled before it returns.
    """
    if any(event.is_set() for event in events):
        return True
    waiters = [asyncio.create_task(event.wait(), name="wait-for-event") for event in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)
