"""The pretty view's terminal: streamed text, whole blocks, and one status line that updates in place.

Streamed text is written the moment it arrives. Prose wraps at word boundaries (a word that would
cross the right edge moves to the next row); code inside a ``` fence wraps at the edge, and each
finished code line is rewritten highlighted. The status line (a spinner, waits, countdowns) sits
below the text and is redrawn by a timer thread while nothing streams; notes are inserted above the
unfinished row, so nothing is ever glued into the model's text. Everything is written under one lock.

On a console that is not a terminal none of this applies: text and blocks are written as they are.
"""

from __future__ import annotations

import threading
import time
import unicodedata
from collections.abc import Callable

from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.syntax import Syntax
from rich.text import Text

# The status line is redrawn this often, and only once text has paused this long (no flicker while streaming).
_REFRESH_SECONDS = 0.125
_QUIET_SECONDS = 0.25
# Lines of a code block highlighted together, so multi-line strings and brackets keep their colours.
_HIGHLIGHT_CONTEXT = 40


def _clean(text: str) -> str:
    """Model text made safe for a terminal: no escape sequences or carriage returns, tabs as spaces later."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in "\n\t":
            out.append(ch)
        elif ch == "\r":
            continue  # CRLF from the model: the \n is the line end
        elif unicodedata.category(ch) == "Cc":
            out.append("\ufffd")  # an ESC from a model must not move our cursor
        else:
            out.append(ch)
    return "".join(out)


class Screen:
    """Writes the pretty view; `text` for tokens, `block` for lines of our own, `note` for interruptions."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal and not console.is_dumb_terminal
        self._colour = self.live and console.color_system is not None
        self._lock = threading.RLock()
        self._col = 0  # cells on the current row
        self._row = ""  # what the current row shows, to write it again after a note
        self._word = ""  # the trailing word of the current row (prose only)
        self._line = ""  # the current line of text, since the last newline
        self._breaks: list[int] = []  # where in _line each wrapped row starts (code only)
        self._fence: str | None = None  # the language of the open ``` block ("" if none was given)
        self._block: list[str] = []
        self._status: Callable[[], Text | None] | None = None
        self._shown: Text | None = None
        self._status_below = False  # drawn on a row of its own below an unfinished row
        self._last_text = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----- streamed text ---------------------------------------------------------------------------------------

    def text(self, chunk: str) -> None:
        """Write model text as it came."""
        with self._lock:
            self._hide_status()
            for ch in _clean(chunk):
                self._put(ch)
            self._last_text = time.monotonic()
            self.console.file.flush()

    def end_text(self) -> None:
        """The stage's text is over: end an unfinished row and forget an unclosed fence."""
        with self._lock:
            self._hide_status()
            if self._col or self._line:
                self._newline()
            self._fence = None
            self._block = []

    def _width(self) -> int:
        return max(self.console.width - 1, 10)  # the last column is never written: no pending-wrap surprises

    def _write(self, text: str) -> None:
        self.console.file.write(text)

    def _put(self, ch: str) -> None:
        if ch == "\n":
            self._end_line()
            return
        if ch == "\t":
            for _ in range(4 - self._col % 4):
                self._put(" ")
            return
        if not self.live:
            self._write(ch)
            self._line += ch
            self._col += 1
            return
        width = cell_len(ch)
        if self._col + width > self._width():
            self._wrap(ch)
            if ch == " " and self._fence is None:
                self._line += ch  # prose: the space that would cross the edge becomes the break
                return
        self._write(ch)
        self._col += width
        self._row += ch
        self._line += ch
        self._word = "" if ch == " " else self._word + ch

    def _wrap(self, ch: str) -> None:
        """Start a new row before `ch`; in prose, take the unfinished word along when it fits on one row."""
        word = self._word if self._fence is None and ch != " " else ""
        moved = word and cell_len(word) < self._col and cell_len(word) + cell_len(ch) <= self._width()
        if moved:
            self._write(f"\x1b[{cell_len(word)}D\x1b[K")
        self._write("\n")
        self._breaks.append(len(self._line) - (len(word) if moved else 0))
        if moved:
            self._write(word)
            self._row, self._col = word, cell_len(word)
        else:
            self._row, self._col, self._word = "", 0, ""

    def _end_line(self) -> None:
        line = self._line
        fence = line.strip().startswith("```")
        if self._fence is not None and not fence:
            self._block.append(line)
            if self._colour and self._fence:
                self._rewrite_highlighted()
        elif fence and self._fence is None:
            self._fence = line.strip()[3:].strip().split(" ")[0].lower()
            self._block = []
        elif fence:
            self._fence = None
        self._newline()

    def _newline(self) -> None:
        self._write("\n")
        self._col, self._row, self._word, self._line, self._breaks = 0, "", "", "", []

    def _rewrite_highlighted(self) -> None:
        """Write the code line just finished again, coloured, over the same rows."""
        assert self._fence
        context = self._block[-_HIGHLIGHT_CONTEXT:]
        syntax = Syntax("", self._fence, theme="ansi_dark", background_color="default")
        highlighted = syntax.highlight("\n".join(context)).split("\n", allow_blank=True)[len(context) - 1]
        if highlighted.plain != self._line:
            return  # the lexer changed the text (it should not): leave the line as it was streamed
        if self._breaks:
            self._write(f"\x1b[{len(self._breaks)}A")
        self._write("\r\x1b[J")
        pieces = highlighted.divide(self._breaks) if self._breaks else [highlighted]
        for index, piece in enumerate(pieces):
            if index:
                self._write("\n")
            self._write(self._ansi(piece))

    def _ansi(self, text: Text) -> str:
        with self.console.capture() as captured:
            self.console.print(text, end="", soft_wrap=True, markup=False, highlight=False)
        return captured.get()

    # ----- our own lines -----------------------------------------------------------------------------------------

    def block(self, renderable: RenderableType, style: str | None = None) -> None:
        """Print something of ours on rows of its own, after the text so far."""
        with self._lock:
            self._hide_status()
            if self._col or self._line:
                self._newline()
            self.console.print(renderable, style=style, markup=False, highlight=False)
            self._draw_status()
            self.console.file.flush()

    def note(self, text: str, style: str | None = None) -> None:
        """Print a line of ours above the unfinished row of text, which then goes on where it was."""
        with self._lock:
            self._hide_status()
            if not self.live:
                if self._col or self._line:
                    self._newline()
                self.console.print(text, style=style, markup=False, highlight=False)
                return
            if self._col:
                self._write("\r\x1b[2K")
            self.console.print(text, style=style, markup=False, highlight=False)
            self._write(self._row)
            self._draw_status()
            self.console.file.flush()

    def prompt(self, text: str) -> None:
        """Write a question on a fresh row and leave the cursor after it: the terminal echoes the answer there,
        and its Enter brings the cursor back to the start of the next row, where the screen expects it."""
        with self._lock:
            self._hide_status()
            if self._col or self._line:
                self._newline()
            self.console.print(text, end="", markup=False, highlight=False)
            self.console.file.flush()

    # ----- the status line ------------------------------------------------------------------------------------

    def status(self, render: Callable[[], Text | None] | None) -> None:
        """Show `render()` on the status line from now on (redrawn by a timer; None: no line), or no status line."""
        with self._lock:
            self._status = render
            if render is None:
                self._hide_status()
            elif self.live and self._thread is None:
                self._thread = threading.Thread(target=self._refresh, name="facilitair-status", daemon=True)
                self._thread.start()
            self._draw_status()
            self.console.file.flush()

    def _refresh(self) -> None:
        while not self._stop.wait(_REFRESH_SECONDS):
            with self._lock:
                self._draw_status()
                self.console.file.flush()

    def _draw_status(self) -> None:
        if not self.live or self._status is None or time.monotonic() - self._last_text < _QUIET_SECONDS:
            return
        text = self._status()
        if text is None:
            self._hide_status()
            return
        text.truncate(self._width(), overflow="ellipsis")
        if self._shown is not None:
            if text == self._shown:
                return
            self._write("\r\x1b[2K")
        elif self._col:
            self._write("\n")
            self._status_below = True
        self._write(self._ansi(text))
        self._shown = text

    def _hide_status(self) -> None:
        if self._shown is None:
            return
        self._write("\r\x1b[2K")
        if self._status_below:
            self._write("\x1b[1A\r" + (f"\x1b[{self._col}C" if self._col else ""))
        self._shown = None
        self._status_below = False

    def close(self) -> None:
        """Stop the timer, take the status line away and end on a fresh row."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._status = None
            self._hide_status()
            if self._col or self._line:
                self._newline()
            self.console.file.flush()
