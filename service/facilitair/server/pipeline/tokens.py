"""The one estimate of how many tokens a text takes, for plans, budgets, context windows and cut-off usage.

No tokenizer is shipped for every model, so counts are estimated: the larger of one token per
CHARS_PER_TOKEN characters and a count of words, numbers and punctuation marks, which code has many of. Both
err towards more tokens than real tokenizers count, so a fitted request is refused only by a window set too
large, and a plan or a usage estimate is high rather than low.

Text still streaming is counted in characters only (no per-token work on the hot path): the budget converts
tokens to characters at CHARS_PER_TOKEN, the rate below which the estimate never goes.
"""

from __future__ import annotations

import math
import re

CHARS_PER_TOKEN = 4
# Chat templates wrap the messages in role markers and separators: a few tokens per message.
TEMPLATE_TOKENS = 32

# Words, runs of up to three digits, runs of punctuation or other symbols, line breaks with their
# indentation: each is about a token to a BPE tokenizer; long words and long runs of symbols take more
# ("->" and "):" are one token, "[::-1]" about four). Each regex is linear (the alternatives start with
# disjoint characters, each one quantifier over one class): model output reaches them.
_PIECE = re.compile(r"[A-Za-z]+|[0-9]{1,3}|[^\sA-Za-z0-9]+|\n[ \t]*")
_LETTERS_PER_TOKEN = 8  # in a word longer than this
_MARKS_PER_TOKEN = 2
# The words and runs of marks that take more than one token: each is a whole piece of _PIECE, as pieces of
# one class never touch (a piece runs to the end of its class's run).
_LONG_WORD = re.compile(rf"[A-Za-z]{{{_LETTERS_PER_TOKEN + 1},}}")
_LONG_MARKS = re.compile(rf"[^\sA-Za-z0-9]{{{_MARKS_PER_TOKEN + 1},}}")


def estimate_tokens(text: str) -> int:
    """Tokens `text` takes, estimated on the high side (see the module's docstring).

    Counted by the regex engine, not a Python loop per piece: a stage's prompt carries earlier stages' output,
    and fitting it measures that text several times on the event loop.
    """
    pieces = _PIECE.subn("", text)[1]  # the number of pieces, without a list of them
    # A piece of n letters takes ceil(n / 8) tokens: (n - 1) // 8 more than the one counted above.
    pieces += sum((len(word) - 1) // _LETTERS_PER_TOKEN for word in _LONG_WORD.findall(text))
    pieces += sum((len(marks) - 1) // _MARKS_PER_TOKEN for marks in _LONG_MARKS.findall(text))
    return max(math.ceil(len(text) / CHARS_PER_TOKEN), pieces)


def request_tokens(system: str, prompt: str) -> int:
    """Tokens a request of a system prompt and a user message takes, estimated (its template included)."""
    return TEMPLATE_TOKENS + estimate_tokens(system) + estimate_tokens(prompt)
