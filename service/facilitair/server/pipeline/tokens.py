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
# ("->" and "):" are one token, "[::-1]" about four).
_PIECE = re.compile(r"(?P<word>[A-Za-z]+)|[0-9]{1,3}|(?P<marks>[^\sA-Za-z0-9]+)|\n[ \t]*")
_LETTERS_PER_TOKEN = 8  # in a word longer than this
_MARKS_PER_TOKEN = 2


def estimate_tokens(text: str) -> int:
    """Tokens `text` takes, estimated on the high side (see the module's docstring)."""
    pieces = 0
    for match in _PIECE.finditer(text):
        if match.lastgroup == "word":
            pieces += math.ceil((match.end() - match.start()) / _LETTERS_PER_TOKEN)
        elif match.lastgroup == "marks":
            pieces += math.ceil((match.end() - match.start()) / _MARKS_PER_TOKEN)
        else:
            pieces += 1
    return max(math.ceil(len(text) / CHARS_PER_TOKEN), pieces)


def request_tokens(system: str, prompt: str) -> int:
    """Tokens a request of a system prompt and a user message takes, estimated (its template included)."""
    return TEMPLATE_TOKENS + estimate_tokens(system) + estimate_tokens(prompt)
