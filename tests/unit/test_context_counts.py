"""The token estimate counted by the regex engine is the one counted piece by piece; shortening gives the same cut.

estimate_tokens reads earlier stages' output (model text) several times per stage, on the event loop; it used to
walk the pieces in Python one by one, and shorten() searched prefixes up to the whole text (issue 19). The old
code is kept here as the oracle.
"""

from __future__ import annotations

import math
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from facilitair.server.pipeline.context import shorten
from facilitair.server.pipeline.tokens import estimate_tokens

OLD_PIECE = re.compile(r"(?P<word>[A-Za-z]+)|[0-9]{1,3}|(?P<marks>[^\sA-Za-z0-9]+)|\n[ \t]*")


def old_estimate_tokens(text: str) -> int:
    """estimate_tokens as it was: a Python loop over the pieces."""
    pieces = 0
    for match in OLD_PIECE.finditer(text):
        if match.lastgroup == "word":
            pieces += math.ceil((match.end() - match.start()) / 8)
        elif match.lastgroup == "marks":
            pieces += math.ceil((match.end() - match.start()) / 2)
        else:
            pieces += 1
    return max(math.ceil(len(text) / 4), pieces)


def old_longest_prefix(text: str, tokens: int) -> int:
    """shorten()'s search as it was: over every prefix of the text."""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if old_estimate_tokens(text[:middle]) <= tokens:
            low = middle
        else:
            high = middle - 1
    return low


TEXTS = st.text(st.sampled_from("aZ09 \t\n\r->:()[]é✓_\0"), max_size=200) | st.lists(
    st.sampled_from(["abcdefghijklmnop", "x", "123456789", "->", "[::-1]", "\n    ", "# ------------", " "]),
    max_size=40,
).map("".join)


@settings(max_examples=800, deadline=None)
@given(TEXTS)
def test_the_estimate_is_the_one_counted_piece_by_piece(text: str) -> None:
    assert estimate_tokens(text) == old_estimate_tokens(text)


@settings(max_examples=300, deadline=None)
@given(TEXTS, st.integers(min_value=-1, max_value=80))
def test_shortening_cuts_where_it_did(text: str, tokens: int) -> None:
    low = old_longest_prefix(text, tokens)
    line_end = text.rfind("\n", 0, low)
    cut = line_end if line_end > low * 3 // 4 else low
    assert shorten(text, tokens).endswith(f"[... {len(text) - cut} more characters left out here to fit the model's "
                                          "context window]")  # fmt: skip
    assert shorten(text, tokens).startswith(text[:cut].rstrip("\n"))
