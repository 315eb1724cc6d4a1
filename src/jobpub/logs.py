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
    root = logging.getLogger()
    if not any(isinstance(handler, _LibraryLogs) for handler in root.handlers):
        root.addHandler(_LibraryLogs(logging.WARNING))
    # The pool warns on every failed connection attempt; jobpub says why once instead
    # (`database_unavailable`, with the server's reason).
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


class _LibraryLogs(logging.Handler):
    """Libraries' warnings (psycopg's pool, say) as our log lines, not bare stderr text."""

    def emit(self, record: logging.LogRecord) -> None:
        structlog.get_logger(record.name).log(
            record.levelno, "library_warning", logger=record.name, message=record.getMessage()
        )
