"""What the server logs, seen from the test: `captured_logs` keeps every event, `on_log` waits for one,
`no_error_logs` fails on any error.

Both work in-process, on structlog's events (`structlog.testing.capture_logs` or a processor added to the
configured chain), never by parsing rendered output; a server process's JSON lines are kept by
`tests.harness.processes.ServerProcess` instead. For `no_error_logs`, three places are watched, because a log
line can come from three:
- our structlog events, captured with `structlog.testing.capture_logs`;
- the stdlib's records (grpc's `grpc._cython.cygrpc` logger writes "Unexpected [DecodeError] raised by
  servicer method" there, with a traceback), captured by pytest's `caplog` handler; structlog loggers
  cached under an earlier configuration also end up there, since the server's setup routes them through
  the stdlib;
- grpc's C core, which writes absl-style lines ("E1130 13:29:18.123 ... file.cc:12] ...") straight to the
  stderr file descriptor, read with `capfd`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import pytest
import structlog

from facilitair.server.logging_setup import configure_logging

ERROR_LEVELS = frozenset({"error", "critical", "exception"})
# absl's prefix for a line at ERROR or FATAL: severity letter, MMDD, a space.
CORE_ERROR_LINE = re.compile(r"^[EF]\d{4} ")
HANG_GUARD = 20.0


@dataclass
class CapturedLogs:
    """The structlog events logged while `captured_logs` is open, in order (each with its `log_level`)."""

    entries: list[MutableMapping[str, Any]]
    _changed: asyncio.Event

    def of(self, event: str) -> list[MutableMapping[str, Any]]:
        """The entries of one event."""
        return [e for e in self.entries if e.get("event") == event]

    async def until(self, event: str, **match: object) -> MutableMapping[str, Any]:
        """Wait (hang guard only) until `event` is logged with these fields, and return its entry.

        For what the server logs after the client has seen the last event (a run's `run_finished` comes after
        its terminal event is committed): leaving the block before it is logged would miss it.
        """
        async with asyncio.timeout(HANG_GUARD):
            while True:
                for entry in self.of(event):
                    if all(entry.get(k) == v for k, v in match.items()):
                        return entry
                self._changed.clear()
                await self._changed.wait()


@contextlib.contextmanager
def captured_logs() -> Iterator[CapturedLogs]:
    """`structlog.testing.capture_logs`, with a way to wait for an event that is logged after the block's last step."""
    changed = asyncio.Event()

    def notify(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        changed.set()  # the capture after it appends the entry before any waiter runs
        return event_dict

    # Context variables (run_id, rpc, stage) merged in as the server's own chain does, so entries can be matched.
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars, notify]) as entries:
        yield CapturedLogs(entries, changed)


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """Put structlog's configuration and the stdlib root logger back as they were when the block ends.

    The processors are restored into the same list (the server's setup changes that list in place, and loggers
    cached on first use hold it), so a logger cached inside the block follows the restored setup.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_structlog = structlog.get_config()
    processors = saved_structlog["processors"]
    saved_processors = list(processors)
    try:
        yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_structlog)
        processors[:] = saved_processors


@contextlib.contextmanager
def no_error_logs(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Fail the test if the block logs anything at error level or above (checked when the block ends normally)."""
    with logging_restored():
        configure_logging("debug", "json")  # the server's own setup: every structlog event goes through the stdlib
        structlog.configure(cache_logger_on_first_use=False)  # nothing cached with this setup outlives the block
        logging.getLogger().addHandler(caplog.handler)  # configure_logging replaced the root's handlers
        capfd.readouterr()  # only what the block writes
        with structlog.testing.capture_logs() as events:
            yield
    ours = [f"{e.get('log_level')}: {e.get('event')}" for e in events if e.get("log_level") in ERROR_LEVELS]
    stdlib = [f"{r.levelname} {r.name}: {r.getMessage()[:200]}" for r in caplog.records if r.levelno >= logging.ERROR]
    err = capfd.readouterr().err
    core = [line for line in err.splitlines() if CORE_ERROR_LINE.match(line) or line.startswith("Traceback")]
    assert ours == [], f"structlog events at error level: {ours}"
    assert stdlib == [], f"stdlib records at error level: {stdlib}"
    assert core == [], f"error lines on stderr: {core}"


@contextlib.contextmanager
def on_log(event: str, **match: object) -> Iterator[asyncio.Event]:
    """An event set when the server logs `event` with these fields (for what no RPC can observe)."""
    seen = asyncio.Event()

    def processor(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event_dict.get("event") == event and all(event_dict.get(k) == v for k, v in match.items()):
            seen.set()
        return event_dict

    # The configured list itself is changed (as structlog.testing.capture_logs does) so cached loggers see it.
    processors = structlog.get_config()["processors"]
    processors.insert(0, processor)
    try:
        yield seen
    finally:
        processors.remove(processor)
