"""Fenced blocks in model output, found by one scan of its lines: time linear in the text's length.

Model output is untrusted input. The regexes this replaces backtracked exponentially: their optional
heading prefix `(?:[#*>\\-]+[ \\t]*)*` tried every way to split a line of `#`, `*`, `>` or `-` before
giving up on a `File:` that was not there (a `# -----` banner of 30 dashes in a code block took
about 95 s, the whole event loop stopped). Here each line is looked at a bounded number of times,
the only regexes are small ones on a single line with no quantifier next to another that matches
the same characters, and the closing fence of a block is found through an index of the fence lines
instead of a scan to the end of the text.

The blocks found are exactly the regexes' (tests/unit/test_parsing_linear.py checks the two agree),
quirks included: a closing fence must repeat the opening one exactly, on a line of its own; a line
that ends in "\\r" is no fence.
"""

from __future__ import annotations

import bisect
import collections
import re
from collections.abc import Iterator
from dataclasses import dataclass

# Each regex here is linear: no quantifier is nested in another or next to one that matches the same characters,
# so a failed attempt backs off over one run of one character class, once per line at most.
_ALONE = {  # a line that is a fence alone, which can close a block
    "`": re.compile(r"^[ \t]*(`{3,})[ \t]*$", re.MULTILINE),
    "~": re.compile(r"^[ \t]*(~{3,})[ \t]*$", re.MULTILINE),
}
_OPENING = {
    "`": re.compile(r"^[ \t]*(`{3,})", re.MULTILINE),
    "`~": re.compile(r"^[ \t]*(`{3,}|~{3,})", re.MULTILINE),
}
_BLANK_LINES = re.compile(r"(?:[ \t]*\n)*")  # unambiguous: each repetition ends at the only newline it can
# A line that may be a file header: heading or list marks, then the start of the word (header_path decides).
_HEADER_HINT = re.compile(r"^[ \t#*>\-]*(?:file|path)", re.IGNORECASE | re.MULTILINE)
# The word that makes a line a file header, and its colon.
_FILE_WORD = re.compile(r"(?:file(?:name)?|path)(?:\*\*)?[ \t]*:", re.IGNORECASE)
# Around a path of blanks alone ("File: ``", "File: **"): blanks (b), "**" (s) and "`" (t), in this order.
_REST_TOKEN = re.compile(r"[ \t]+|\*+|`|[^ \t*`]")
_BLANK_PATH_TOKENS = re.compile(r"b?s?b?t?bt?b?s?b?")  # on at most _MOST_REST_TOKENS letters: no long backtracking
_MOST_REST_TOKENS = 9
_BLANKS = " \t"
_HEADING_MARKS = " \t#*>-"  # "### File:", "- **File:**", "> Path:" (any mix, in any order)


@dataclass(frozen=True, slots=True)
class Block:
    """A fenced block: its opening fence's info string (the language for ```python) and its body."""

    info: str
    body: str


class _FenceLines:
    """The lines that are a fence of one character alone, read from the text only as far as a question needs."""

    def __init__(self, text: str, char: str) -> None:
        self._unread = _ALONE[char].finditer(text)
        self._starts: dict[int, list[int]] = collections.defaultdict(list)  # fence length -> line starts, in order
        self.longest: int | None = None  # the longest fence, once every line is read

    def first_after(self, length: int, pos: int) -> int | None:
        """Where the first line after `pos` that is this fence of `length` alone starts; None if there is none."""
        starts = self._starts.get(length)
        if starts:
            after = bisect.bisect_right(starts, pos)
            if after < len(starts):
                return starts[after]  # every line before the last one read is indexed: this is the first
        if self.longest is not None:
            return None
        for line in self._unread:
            found = line.end(1) - line.start(1)
            self._starts[found].append(line.start())
            if found == length and line.start() > pos:
                return line.start()
        self.longest = max(self._starts, default=0)
        return None


class Fences:
    """A text's fenced blocks. A closing fence is found through an index of the fence-only lines (O(log n)),
    which is read only as far as the blocks asked for need: each line is read once whatever is asked."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._fence_lines = {char: _FenceLines(text, char) for char in "`~"}

    def block_at(self, pos: int, fence_chars: str) -> tuple[Block, int] | None:
        """The block that opens at the line starting at `pos`, and where its closing line ends; None if none does.

        As `^[ \t]*(?P<fence>X{3,})(?P<info>[^\n]*)\n(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$` matches it: the
        longest fence that some later line closes wins (the rest of the opening run goes to the info string),
        and the first such line closes it.
        """
        opening = _OPENING[fence_chars].match(self.text, pos)
        return None if opening is None else self._block(opening)

    def _block(self, opening: re.Match[str]) -> tuple[Block, int] | None:
        text = self.text
        line_end = text.find("\n", opening.end())
        if line_end < 0:  # an opening fence line ends with a newline
            return None
        char, run = text[opening.start(1)], opening.end(1) - opening.start(1)
        fence_lines = self._fence_lines[char]
        length = run  # (a loop over the run's length at most: linear in the opening line)
        while length >= 3:
            closing = fence_lines.first_after(length, line_end)
            if closing is not None:
                closing_end = text.find("\n", closing)
                info = text[opening.start(1) + length : line_end]
                return Block(info, text[line_end + 1 : closing]), len(text) if closing_end < 0 else closing_end
            length = length - 1 if fence_lines.longest is None else min(length - 1, fence_lines.longest)
        return None

    def code_blocks(self) -> Iterator[Block]:
        """Every ```-fenced block, in order, none inside another (what `re.finditer` found)."""
        pos = 0
        while (opening := _OPENING["`"].search(self.text, pos)) is not None:
            found = self._block(opening)
            if found is None:
                pos = opening.end()  # the next line start is the next place a block can open
            else:
                yield found[0]
                pos = found[1]

    def file_blocks(self) -> Iterator[tuple[str, Block]]:
        """Every `File: path` line followed (blank lines between allowed) by a ``` or ~~~ block: its raw path, block.

        A header whose path is blank still takes its block (the path is then "", which no caller accepts).
        """
        text = self.text
        pos = 0
        while (hint := _HEADER_HINT.search(text, pos)) is not None:
            line_end = text.find("\n", hint.end())
            if line_end < 0:  # a header line ends with a newline
                return
            path = header_path(text[hint.start() : line_end])
            found = None
            if path is not None:
                blank = _BLANK_LINES.match(text, line_end + 1)  # always matches, if only the empty string
                found = self.block_at(blank.end() if blank else line_end + 1, "`~")
            if path is None or found is None:
                pos = line_end + 1
            else:
                yield path, found[0]
                pos = found[1]


def header_path(line: str) -> str | None:
    """The raw path a `File: path` line names ("" when it names none), or None when the line is no such header.

    The grammar: heading or list marks, `File`, `Filename` or `Path` (any case, maybe in `**`), a colon,
    then the path, maybe in backticks and `**`, which holds no backtick and no `*`.
    """
    word = _FILE_WORD.match(line, len(line) - len(line.lstrip(_HEADING_MARKS)))
    if word is None:
        return None
    rest = line[word.end() :]
    # Before the path: blanks, "**", blanks, "`" (each optional, taken when there).
    start = _skip_blanks(rest, 0)
    if rest.startswith("**", start):
        start = _skip_blanks(rest, start + 2)
    if rest.startswith("`", start):
        start += 1
    candidate = rest[start:]
    end = _trailer_start(candidate)
    path = candidate[:end]
    if end > 0 and "`" not in path and "*" not in path:
        return path if path.strip(_BLANKS) else ""
    # No path with something in it: the regex still took the line when blanks alone could be the path.
    return "" if _blank_path_fits(rest) else None


def _blank_path_fits(rest: str) -> bool:
    """Whether `rest` is blanks, "**" and "`" in the order the regex allows around a path of blanks alone."""
    kinds: list[str] = []
    for token in _REST_TOKEN.finditer(rest):
        text = token.group()
        kind = "b" if text[0] in _BLANKS else "s" if text == "**" else "t" if text == "`" else None
        if kind is None or len(kinds) == _MOST_REST_TOKENS:
            return False
        kinds.append(kind)
    return _BLANK_PATH_TOKENS.fullmatch("".join(kinds)) is not None


def _skip_blanks(text: str, start: int) -> int:
    """The index of the first character at or after `start` that is not a blank."""
    return len(text) - len(text[start:].lstrip(_BLANKS))


def _trailer_start(text: str) -> int:
    """Where the longest tail of `text` that is "`", blanks, "**", blanks (each optional) begins."""
    end = len(text.rstrip(_BLANKS))
    if text.endswith("**", 0, end):
        end = len(text[: end - 2].rstrip(_BLANKS))
    if end > 0 and text[end - 1] == "`":
        end -= 1
    return end
