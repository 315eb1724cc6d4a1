"""Durations as the CLI takes them: `30s`, `5m`, `1h30m`, `2d`, `250ms`, or bare seconds."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """`1h30m` → 90 minutes; a bare number is seconds. ValueError if it is neither, or
    longer than a timedelta holds (`1e20`, `inf`)."""
    text = text.strip()
    try:
        return timedelta(seconds=float(text))
    except ValueError:
        pass
    except OverflowError:
        raise _too_long(text) from None
    parts = _PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use 30s, 5m, 1h30m, 2d or seconds)")
    try:
        return timedelta(seconds=sum(float(number) * _UNITS[unit] for number, unit in parts))
    except OverflowError:
        raise _too_long(text) from None


def _too_long(text: str) -> ValueError:
    return ValueError(f"too long: {text!r} (at most {timedelta.max.days:,} days)")
