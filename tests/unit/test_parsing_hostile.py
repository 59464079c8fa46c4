"""Hostile model output: every parser of it finishes quickly, never raises, and reads what it can (issue 19, item 1).

The file-block regex these parsers used backtracked exponentially on a comment banner in a code block without a
`File:` line (30 dashes: about 95 s; 40: hours), freezing the event loop and with it every stream of the
replica. Each case here is about 1-2 MB; the bound is a hang detector, not a performance target: the linear
parsers take at most about a second on a loaded two-core machine shared by several test runs (a few tenths
idle). pytest-timeout ends a case that hangs outright.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from structlog.testing import capture_logs

from facilitair.server.pipeline.parsing import MAX_FILES, MAX_SCANNED_CHARS, ParsedFile, parse_files, parse_verdict
from facilitair.server.pipeline.tokens import estimate_tokens

# A generous bound; the old parser took 95 s on the 30-dash banner and hours on the 40-dash one.
HANG_SECONDS = 10.0

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")


def banner(dashes: int) -> str:
    """A reply with a comment banner in a code block and no `File:` line (the output that froze the server)."""
    return f"Here is the code:\n```python\n# {'-' * dashes}\nprint(1)\n```\n"


def within_bound(parse: Callable[[], T]) -> T:
    """`parse()`'s result, failing the test if it took longer than HANG_SECONDS."""
    started = time.perf_counter()
    result = parse()
    elapsed = time.perf_counter() - started
    assert elapsed < HANG_SECONDS, f"took {elapsed:.2f} s"
    return result


# name -> (model output, the files parse_files must find in it)
CASES: dict[str, tuple[str, list[ParsedFile]]] = {
    "banner-30": (banner(30), [ParsedFile("solution.py", f"# {'-' * 30}\nprint(1)\n")]),
    "banner-40": (banner(40), [ParsedFile("solution.py", f"# {'-' * 40}\nprint(1)\n")]),
    "banner-1000": (banner(1000), [ParsedFile("solution.py", f"# {'-' * 1000}\nprint(1)\n")]),
    "banners-in-an-unclosed-fence": ("```python\n" + f"# {'-' * 40}\n" * 20_000, []),
    "unclosed-fence-after-a-header": ("File: a.py\n```python\n" + f"#{'=' * 60}\n" * 10_000, []),
    "marker-lines": ("#*>-\n" * 100_000, []),
    "mixed-marker-lines": ("# - * > ## -- ** >> \n" * 50_000, []),
    "a-marker-line-of-1mb": ("#*>- " * 200_000 + "\n```\nx\n```\n", [ParsedFile("solution.txt", "x\n")]),
    "a-1mb-line": ("x" * 1_000_000, []),
    "a-header-of-1mb": ("File: " + "a" * 1_000_000 + "\n```\nx\n```\n", [ParsedFile("solution.txt", "x\n")]),
    "a-header-of-blanks-then-a-star": ("File:" + " " * 1_000_000 + "*\n```\nx\n```\n",
                                       [ParsedFile("solution.txt", "x\n")]),
    "a-path-of-blanks": ("File: a" + " b" * 500_000 + "\n```\nx\n```\n", [ParsedFile("solution.txt", "x\n")]),
    "many-fences": ("```\n" * 500_000, [ParsedFile("solution.txt", "")] + [
        ParsedFile(f"solution_{i}.txt", "") for i in range(2, MAX_FILES + 1)
    ]),
    "many-files": ("".join(f"File: f{i}.py\n```\n{i}\n```\n" for i in range(20_000)), [
        ParsedFile(f"f{i}.py", f"{i}\n") for i in range(MAX_FILES)
    ]),
    "fences-of-every-length": ("".join("`" * n + "\n" for n in range(3, 1400)), []),
    "headers-without-blocks": ("File: a.py\n\n\n" * 100_000, []),
    "nested-fences": ("File: a.py\n````\n```python\nx = 1\n```\n````\n",
                      [ParsedFile("a.py", "```python\nx = 1\n```\n")]),
    "crlf": ("File: a.py\r\n```python\r\n# " + "-" * 40 + "\r\n```\r\n" * 50_000, []),
    "nuls": ("\0" * 1_000_000 + "\nFile: a\0b.py\n```\nx\n```\n", [ParsedFile("solution.txt", "x\n")]),
    "over-the-scan-limit": ("File: a.py\n```\n" + "x" * MAX_SCANNED_CHARS + "\n```\n", []),
}  # fmt: skip


@pytest.mark.parametrize(("text", "files"), list(CASES.values()), ids=list(CASES))
def test_hostile_output_is_parsed_for_files_in_linear_time(text: str, files: list[ParsedFile]) -> None:
    assert within_bound(lambda: parse_files(text, fallback_stem="solution")) == files


@pytest.mark.parametrize("text", [text for text, _ in CASES.values()], ids=list(CASES))
def test_hostile_output_is_a_malformed_verdict_in_linear_time(text: str) -> None:
    verdict = within_bound(lambda: parse_verdict(text))
    assert (verdict.approved, verdict.well_formed) == (False, False)


@pytest.mark.parametrize("text", [text for text, _ in CASES.values()], ids=list(CASES))
def test_hostile_output_is_counted_in_linear_time(text: str) -> None:
    assert within_bound(lambda: estimate_tokens(text)) >= len(text) // 4


@pytest.mark.parametrize(
    ("written", "logged"), [(MAX_FILES, []), (MAX_FILES + 5, [("model_output_capped", MAX_FILES)])]
)
@pytest.mark.parametrize("header", ["File: f{i}.py\n", ""], ids=["named", "unnamed"])
def test_a_stage_that_writes_too_many_files_keeps_the_first_and_says_so(
    written: int, logged: list[tuple[str, int]], header: str
) -> None:
    text = "".join(f"{header.format(i=i)}```\n{i}\n```\n" for i in range(written))
    with capture_logs() as logs:
        files = parse_files(text, fallback_stem="solution")
    assert [f.content for f in files] == [f"{i}\n" for i in range(MAX_FILES)]
    assert [(e["event"], e["files"]) for e in logs] == logged


def test_output_over_the_scan_limit_is_read_up_to_it_and_says_so() -> None:
    text = "File: a.py\n```\nx\n```\n" + "y" * MAX_SCANNED_CHARS + "\nFile: b.py\n```\nz\n```\n"
    with capture_logs() as logs:
        files = parse_files(text, fallback_stem="solution")
    assert files == [ParsedFile("a.py", "x\n")]
    assert [(e["event"], e["chars"], e["scanned_chars"]) for e in logs] == [
        ("model_output_capped", len(text), MAX_SCANNED_CHARS)
    ]


@pytest.mark.parametrize(
    ("text", "approved", "well_formed"),
    [
        ("```json\n" + "[" * 100_000 + "\n```", False, False),
        ('{"approved": true, "summary": "s", "issues": [], "notes": ' + "[" * 600 + "]" * 600 + "}", True, True),
        ('{"approved": false, "summary": "s", "issues": [{"description": "d", "file": ' + "[" * 600 + "]" * 600 + "}]}",
         False, True),
    ],
    ids=["deeper-than-the-decoder", "deeper-than-python-recursion", "deep-issue-file"],
)  # fmt: skip
def test_deeply_nested_json_is_read_or_rejected_never_raised(text: str, approved: bool, well_formed: bool) -> None:
    verdict = within_bound(lambda: parse_verdict(text))
    assert (verdict.approved, verdict.well_formed) == (approved, well_formed)
