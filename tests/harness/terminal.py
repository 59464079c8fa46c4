"""The CLI in a pseudo-terminal, read through a terminal emulator (pyte): what a person would see.

The CLI runs as a real subprocess whose stdin, stdout and stderr are the slave side of a pty of a fixed size;
everything it writes goes through the kernel's terminal line discipline (\\n becomes \\r\\n, as on a real
terminal) into pyte, which applies cursor moves, erasures and colours. Tests wait for what the screen shows
(`wait_for`), with a timeout only as a hang guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import sys
import termios
from collections.abc import AsyncIterator, Callable, Mapping

import pyte

HANG_GUARD = 30.0


class Terminal:
    """A screen fed by a process's output; `rows` is tall enough that nothing scrolls away in a test."""

    def __init__(self, rows: int, cols: int) -> None:
        self.screen = pyte.Screen(cols, rows)
        self._stream = pyte.ByteStream(self.screen)
        self._changed = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None
        self.raw = bytearray()
        self.closed = False
        self.master = -1

    def feed(self, data: bytes) -> None:
        """Apply output to the screen."""
        self.raw += data
        self._stream.feed(data)
        self._changed.set()

    def lines(self) -> list[str]:
        """The screen's rows, right-stripped, without the empty rows at the bottom."""
        rows = [line.rstrip() for line in self.screen.display]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    def text(self) -> str:
        """The screen as text."""
        return "\n".join(self.lines())

    def row_of(self, needle: str) -> int:
        """The index of the first row containing `needle`."""
        return next(i for i, line in enumerate(self.lines()) if needle in line)

    def colour_at(self, row: int, col: int) -> str:
        """The foreground colour of one cell, as pyte names it ("brown" is ANSI yellow, 33)."""
        return str(self.screen.buffer[row][col].fg)

    async def wait_for(self, predicate: Callable[[str], bool], *, within: float = HANG_GUARD) -> str:
        """Wait until the screen's text satisfies `predicate`; return that text."""
        async with asyncio.timeout(within):
            while True:
                text = self.text()
                if predicate(text):
                    return text
                if self.closed:
                    raise AssertionError(f"the CLI ended and the screen never matched:\n{text}")
                self._changed.clear()
                await self._changed.wait()

    async def wait_exit(self, *, within: float = HANG_GUARD) -> int:
        """Wait for the process to end and its last output to be on the screen; its exit code."""
        assert self.proc is not None
        async with asyncio.timeout(within):
            code = await self.proc.wait()
            while not self.closed:
                self._changed.clear()
                await self._changed.wait()
        return code

    def type(self, text: str) -> None:
        """What a person types at the keyboard (a line ends with "\\n", as Enter sends it in cooked mode)."""
        os.write(self.master, text.encode())

    def interrupt(self) -> None:
        """What Ctrl-C does: SIGINT to the process."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)


@contextlib.asynccontextmanager
async def terminal(
    target: str, *args: str, rows: int = 80, cols: int = 100, env: Mapping[str, str] | None = None
) -> AsyncIterator[Terminal]:
    """Run `facilitair ARGS --target TARGET` in a pty of rows x cols (with `env` added to the environment); kill
    it if the test leaves early."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    term = Terminal(rows, cols)
    term.master = master
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")},
        "TERM": "xterm-256color",
        **(env or {}),
    }
    loop = asyncio.get_running_loop()
    os.set_blocking(master, False)

    def readable() -> None:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer of the slave side is gone
            data = b""
        if data:
            term.feed(data)
        else:
            loop.remove_reader(master)
            term.closed = True
            term._changed.set()

    loop.add_reader(master, readable)
    try:
        term.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "facilitair.cli.main", *args, "--target", target,
            stdin=slave, stdout=slave, stderr=slave, env=env,
        )  # fmt: skip
        os.close(slave)
        slave = -1
        yield term
    finally:
        if term.proc is not None and term.proc.returncode is None:
            term.proc.kill()
            await term.proc.wait()
        if not term.closed:
            loop.remove_reader(master)
        os.close(master)
        if slave >= 0:
            os.close(slave)
