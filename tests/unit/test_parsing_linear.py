"""The linear scanner finds exactly the blocks the old regexes found, on inputs small enough for them (issue 19).

The regexes below are the ones pipeline/parsing.py used until the scanner (pipeline/fences.py) replaced them:
exponential on long runs of `#*>-`, but exact on short inputs, so they are the scanner's oracle. Inputs are
built from the pieces models write (headers in every dress, fences of every kind, code, blank lines) and
from short strings of the characters the grammar cares about.
"""

from __future__ import annotations

import itertools
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facilitair.server.pipeline.fences import Fences, header_path
from facilitair.server.pipeline.parsing import ParsedFile, parse_files, safe_path

OLD_FILE_BLOCK = re.compile(
    r"""
    ^[ \t]*(?:[#*>\-]+[ \t]*)*                # optional heading or list marker: "### ", "- "
    (?:\*\*)?(?:file(?:name)?|path)(?:\*\*)?   # "File", "**File**", "Filename", "Path"
    [ \t]*:[ \t]*(?:\*\*)?[ \t]*
    `?(?P<path>[^`\n*]+?)`?                   # the path, maybe in backticks
    [ \t]*(?:\*\*)?[ \t]*\n
    (?:[ \t]*\n)*                              # blank lines before the fence
    [ \t]*(?P<fence>`{3,}|~{3,})[^\n]*\n       # opening fence with its info string
    (?P<body>.*?)
    ^[ \t]*(?P=fence)[ \t]*$                   # the same fence closes it
    """,
    re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE,
)
OLD_ANY_BLOCK = re.compile(
    r"^[ \t]*(?P<fence>`{3,})(?P<lang>[^\n]*)\n(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$", re.MULTILINE | re.DOTALL
)
OLD_EXTENSIONS = {
    **{"python": "py", "py": "py", "javascript": "js", "js": "js", "typescript": "ts", "ts": "ts", "go": "go"},
    **{"rust": "rs", "java": "java", "markdown": "md", "md": "md", "bash": "sh", "sh": "sh"},
}


def old_parse_files(text: str) -> list[ParsedFile]:
    """parse_files as it was, on the old regexes."""
    files: dict[str, str] = {}
    for match in OLD_FILE_BLOCK.finditer(text):
        path = safe_path(match.group("path"))
        if path is not None:
            files[path] = match.group("body")
    if not files:
        for i, match in enumerate(OLD_ANY_BLOCK.finditer(text), start=1):
            ext = OLD_EXTENSIONS.get(match.group("lang").strip().lower(), "txt")
            files[f"solution_{i}.{ext}" if i > 1 else f"solution.{ext}"] = match.group("body")
    return [ParsedFile(path, content) for path, content in files.items()]


HEADER_LINES = st.tuples(
    st.text(" \t#*>-", max_size=4),
    st.sampled_from(["File", "file", "FILENAME", "Filename", "Path", "paTH", "Files", "Fil", "**File**", "Path**"]),
    st.text(" \t*", max_size=3),
    st.sampled_from([":", ";", ""]),
    st.text("` *\tab/.\r", max_size=8),
).map("".join)
FENCE_LINES = st.tuples(
    st.text(" \t", max_size=2),
    st.sampled_from(["```", "````", "`````", "~~~", "~~~~", "``", "~~"]),
    st.text(" \tpyjson`~\r", max_size=4),
).map("".join)
PIECES = st.sampled_from(
    [
        "",
        " ",
        "\t",
        "x = 1",
        "# ------",
        "- item",
        '{"approved": true, "summary": "s", "issues": []}',
        "File: src/a.py",
        "**File:** `src/b.py`",
        "### Path: c.py",
        "File: ../up.py",
        "File: /abs.py",
        "```",
        "```python",
        "```json",
        "~~~",
        "text ``` inline",
    ]
)
TEXTS = st.tuples(st.lists(st.one_of(PIECES, HEADER_LINES, FENCE_LINES), max_size=14), st.booleans()).map(
    lambda parts: "\n".join(parts[0]) + ("\n" if parts[1] else "")
)
# Short strings of the grammar's own characters; short, because the old regex is exponential in runs of marks.
RAW_TEXTS = st.text("File:path `~*#>-\t\n\rx", max_size=18)
SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def old_file_blocks(text: str) -> list[tuple[str, str]]:
    """(path, body) of each block the old regex found; a path of blanks as "" (header_path says so)."""
    return [(m["path"] if m["path"].strip(" \t") else "", m["body"]) for m in OLD_FILE_BLOCK.finditer(text)]


@SETTINGS
@given(st.one_of(TEXTS, RAW_TEXTS))
def test_the_scanner_finds_the_old_regexes_blocks(text: str) -> None:
    fences = Fences(text)
    assert [(path, block.body) for path, block in fences.file_blocks()] == old_file_blocks(text)
    assert [(block.info, block.body) for block in fences.code_blocks()] == [
        (m["lang"], m["body"]) for m in OLD_ANY_BLOCK.finditer(text)
    ]
    assert parse_files(text, fallback_stem="solution") == old_parse_files(text)


@settings(max_examples=3000, deadline=None)
@given(HEADER_LINES)
def test_a_header_line_names_the_path_the_old_regex_took(line: str) -> None:
    old = OLD_FILE_BLOCK.match(line + "\n```\n```")
    expected = None if old is None else old["path"] if old["path"].strip(" \t") else ""
    assert header_path(line) == expected


def test_every_short_header_names_the_path_the_old_regex_took() -> None:
    # Every rest of a header line up to 6 characters of blanks, "*", "`" and a path character: the cases where
    # blanks, stars and backticks around a path decide whether the line is a header at all.
    for length in range(7):
        for chars in itertools.product(" \t*`a", repeat=length):
            line = "File:" + "".join(chars)
            old = OLD_FILE_BLOCK.match(line + "\n```\n```")
            expected = None if old is None else old["path"] if old["path"].strip(" \t") else ""
            assert header_path(line) == expected, line
