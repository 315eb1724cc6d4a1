"""structlog set-up: JSON lines by default, console rendering on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog


def configure(
    log_format: Literal["auto", "json", "console"],
    level: Literal["debug", "info", "warning", "error"],
    stream: TextIO = sys.stderr,
) -> None:
    if log_format == "auto":
        log_format = "console" if stream.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer()
        if log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        # No caching: loggers are bound at import; a later configure() must still apply.
        # One log line per batch makes the lookup cost nothing that matters.
        cache_logger_on_first_use=False,
    )
