"""Request bodies and query strings to facilitair.v1 messages, and messages to canonical JSON responses.

One schema for gRPC and HTTP: a body is the request message in protobuf's canonical JSON, parsed with
json_format, and checked like the guard checks a gRPC request (strings both stores can hold). Every problem
is InvalidArgument naming the field (or `body` when the JSON itself is wrong), so the caller gets 400 with a
BadRequest detail, as over gRPC.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from facilitair.server.errors import InvalidArgument
from facilitair.server.transport.requests import unstorable_strings

M = TypeVar("M", bound=Message)

# The largest body accepted: gRPC's limit on a request message (transport/app.py, server_options).
MAX_BODY_BYTES = 1024 * 1024
# A body must arrive within this long: a client that sends a few bytes a minute holds no handler forever.
BODY_SECONDS = 30.0
# A parse error's text is cut to this (json_format lists every field a message has).
MAX_WHY_CHARS = 200
JSON_TYPE = "application/json"


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's body as a JSON object ({} when empty); InvalidArgument on `body` for anything else."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise InvalidArgument("body", f"is {request.content_length} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        async with asyncio.timeout(BODY_SECONDS):
            raw = await request.read()  # the app's client_max_size bounds a body sent without a length
    except web.HTTPRequestEntityTooLarge:
        raise InvalidArgument("body", f"is larger than the limit of {MAX_BODY_BYTES} bytes") from None
    except TimeoutError:
        raise InvalidArgument("body", f"did not arrive within {BODY_SECONDS:g} s") from None
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise InvalidArgument("body", "is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument("body", f"is not valid JSON ({str(exc)[:MAX_WHY_CHARS]})") from None
    if not isinstance(data, dict):
        raise InvalidArgument("body", "must be a JSON object (the request message in protobuf's JSON form)")
    return data


def to_message(data: dict[str, Any], message_class: type[M]) -> M:
    """`data` (a body or a query) parsed as `message_class`; InvalidArgument naming each field that is wrong."""
    message = message_class()
    try:
        json_format.ParseDict(data, message)
    except (json_format.ParseError, RecursionError, ValueError, TypeError):
        violations = []
        for key, value in data.items():
            try:
                json_format.ParseDict({key: value}, message_class())
            except (json_format.ParseError, RecursionError, ValueError, TypeError) as exc:
                violations.append((str(key)[:64], _why(exc)))
        raise InvalidArgument.many(violations or [("body", "is not a valid request")]) from None
    unstorable = unstorable_strings(message)
    if unstorable:
        raise InvalidArgument.many(unstorable)
    return message


def _why(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "is nested too deeply"
    text = str(exc).split("  Available Fields")[0]
    return text if len(text) <= MAX_WHY_CHARS else text[: MAX_WHY_CHARS - 1] + "…"


def to_json(message: Message) -> dict[str, Any]:
    """A message in canonical JSON (lowerCamelCase names, int64 as strings, enums by name)."""
    return json_format.MessageToDict(message)


def respond(message: Message, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON response holding `message`."""
    return json_response(to_json(message), status=status, headers=headers)


def json_response(data: object, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON response (compact, UTF-8)."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return web.Response(body=body, status=status, content_type=JSON_TYPE, charset="utf-8", headers=headers)
