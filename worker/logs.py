"""Logging, configured in exactly one place: JSON lines off a terminal, readable output on one.

Never log a key, a password or a whole customer record: log ids, outcomes and reasons.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(json_output: bool | None = None, level: str = "INFO") -> None:
    use_json = (not sys.stderr.isatty()) if json_output is None else json_output
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO))
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks if use_json else structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
