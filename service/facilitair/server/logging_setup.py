"""structlog, configured once: JSON when stderr is not a terminal, readable console output when it is.

The stdlib's records (grpc's, the SDKs', httpx's) go through the same processors, so every line
of the server's output has one format; `run_id`, `rpc` and `stage` come from contextvars.

Tracebacks never show the values of local variables, in either format: a stage's frames hold the
user's task, the generated code and the provider's answers (structlog's console default, rich's
traceback, prints them all).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Libraries whose INFO lines would log every HTTP request (with URLs and headers) at our level.
_QUIET = ("httpx", "httpx2", "httpcore", "httpcore2", "aiohttp", "openai", "anthropic", "grpc", "asyncio")


_PROCESSORS: list[structlog.types.Processor] = []


def configure_logging(level: str = "info", fmt: str = "auto", *, replica: str | None = None) -> None:
    """Set up structlog and the stdlib root logger; call once at start. `replica` names this server in every line."""
    console = sys.stderr.isatty() if fmt == "auto" else fmt == "console"

    def add_replica(_logger: object, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if replica is not None:
            event.setdefault("replica", replica)
        return event

    shared: list[structlog.types.Processor] = [
        add_replica,
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor
    if console:
        # rich (a base dependency) draws the traceback; its default, show_locals=True, is what must not be.
        renderer = structlog.dev.ConsoleRenderer(
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False)
        )
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    # Our one list is changed in place, not replaced: loggers cached on first use keep a reference to it, so
    # a second configuration (or structlog.testing.capture_logs, which also edits it in place) reaches them.
    _PROCESSORS[:] = [*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter]
    structlog.configure(
        processors=_PROCESSORS,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
