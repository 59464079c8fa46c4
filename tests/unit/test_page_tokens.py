"""ListRuns page tokens (runs/queries.py): what a token holds, and every malformed token refused the same way."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from facilitair.server.errors import InvalidArgument
from facilitair.server.runs.queries import MAX_PAGE_TOKEN_CHARS, decode_page_token, encode_page_token
from tests.harness.stores import run_row


def b64(raw: bytes) -> str:
    """URL-safe base64, as tokens are written."""
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(
    ("created_at", "run_id", "token"),
    [
        (1.5, "r", "WzEuNSwgInIiXQ=="),  # [1.5, "r"]
        (1_700_000_000.123456, "2f1c", b64(b'[1700000000.123456, "2f1c"]')),
        (0.0, "", b64(b'[0.0, ""]')),
    ],
    ids=["small", "a-real-time", "zero-and-empty"],
)
def test_a_token_is_the_last_rows_position_and_reads_back_exactly(created_at: float, run_id: str, token: str) -> None:
    row = dataclasses.replace(run_row(run_id="x"), created_at=created_at, run_id=run_id)
    assert encode_page_token(row) == token
    assert decode_page_token(token) == (created_at, run_id)


def test_an_integer_time_reads_as_a_float() -> None:
    assert decode_page_token(b64(b'[5, "r"]')) == (5.0, "r")


BAD = {
    "not-base64": "garbage!",
    "an-object": b64(b'{"created_at": 1}'),
    "two-numbers": b64(b"[1, 2]"),
    "three-items": b64(b'[1, "r", 3]'),
    "a-bool-time": b64(b'[true, "r"]'),
    "a-string-time": b64(b'["1", "r"]'),
    "not-utf8": b64(b"\xff\xfe"),
    "not-json": b64(b"[1, "),
    "past-a-float": b64(b"[" + b"9" * 400 + b', "r"]'),
    "unclosed-nesting": b64(b"[" * 384),
    "too-long": b64(b'[1, "' + b"r" * MAX_PAGE_TOKEN_CHARS + b'"]'),
    # What PostgreSQL's text cannot hold, or asyncpg cannot encode (it ended as INTERNAL there).
    "a-nul": b64(b'[1.0, "\\u0000"]'),
    "a-lone-surrogate": b64(b'[1, "\\ud800"]'),
    "a-nul-after-an-id": b64(b'[1.0, "0b7e1516-28ae-4d2a-8abf-7158809cf4f3\\u0000"]'),
    # Numbers no row has (json.loads reads these by default).
    "nan": b64(b'[NaN, "r"]'),
    "infinity": b64(b'[Infinity, "r"]'),
    "minus-infinity": b64(b'[-Infinity, "r"]'),
    "an-infinite-float": b64(b'[1e999, "r"]'),
    "nan-in-an-extra-item": b64(b'[1, "r", NaN]'),
}


@pytest.mark.parametrize("token", list(BAD.values()), ids=list(BAD))
def test_anything_else_is_an_invalid_page_token(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token)
    assert caught.value.violations == [("page_token", "not a token returned by ListRuns")]
