"""A check that nothing is logged at error level while a block runs: by us, by grpc's Python code, by grpc's core.

Three places are watched, because a log line can come from three:
- our structlog events, captured with `structlog.testing.capture_logs`;
- the stdlib's records (grpc's `grpc._cython.cygrpc` logger writes "Unexpected [DecodeError] raised by
  servicer method" there, with a traceback), captured by pytest's `caplog` handler; structlog loggers
  cached under an earlier configuration also end up there, since the server's setup routes them through
  the stdlib;
- grpc's C core, which writes absl-style lines ("E1130 13:29:18.123 ... file.cc:12] ...") straight to the
  stderr file descriptor, read with `capfd`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

import pytest
import structlog

from facilitair.server.logging_setup import configure_logging

ERROR_LEVELS = frozenset({"error", "critical", "exception"})
# absl's prefix for a line at ERROR or FATAL: severity letter, MMDD, a space.
CORE_ERROR_LINE = re.compile(r"^[EF]\d{4} ")


@contextlib.contextmanager
def no_error_logs(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Fail the test if the block logs anything at error level or above (checked when the block ends normally)."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_structlog = structlog.get_config()
    configure_logging("debug", "json")  # the server's own setup: every structlog event goes through the stdlib
    structlog.configure(cache_logger_on_first_use=False)  # nothing cached with this setup outlives the block
    root.addHandler(caplog.handler)  # configure_logging replaced the root's handlers, pytest's among them
    capfd.readouterr()  # only what the block writes
    try:
        with structlog.testing.capture_logs() as events:
            yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_structlog)
    ours = [f"{e.get('log_level')}: {e.get('event')}" for e in events if e.get("log_level") in ERROR_LEVELS]
    stdlib = [f"{r.levelname} {r.name}: {r.getMessage()[:200]}" for r in caplog.records if r.levelno >= logging.ERROR]
    err = capfd.readouterr().err
    core = [line for line in err.splitlines() if CORE_ERROR_LINE.match(line) or line.startswith("Traceback")]
    assert ours == [], f"structlog events at error level: {ours}"
    assert stdlib == [], f"stdlib records at error level: {stdlib}"
    assert core == [], f"error lines on stderr: {core}"
