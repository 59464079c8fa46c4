"""An HTTP client for the gateway: JSON calls, and a server-sent event stream read message by message.

The SSE reader follows the WHATWG parsing rules the gateway relies on (fields `id`, `event`, `data`, `retry`;
a line starting with ':' is a comment; a blank line ends a message), so a test sees exactly what an EventSource
would, and the events it decodes are the RunEvents themselves (json_format), comparable byte for byte with
WatchRun's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from google.protobuf import json_format

from facilitair.v1 import orchestrator_pb2 as pb

# Hang guard for one read of a stream.
READ_GUARD = 30.0


@dataclass
class Message:
    """One SSE message (or a comment: `comment` set, nothing else)."""

    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    retry: int | None = None
    comment: str | None = None

    def run_event(self) -> pb.RunEvent:
        """The RunEvent its data holds."""
        return json_format.Parse("\n".join(self.data), pb.RunEvent())


async def messages(response: aiohttp.ClientResponse) -> AsyncIterator[Message]:
    """The messages of an event stream, in order, until the server ends it."""
    current = Message()
    while True:
        raw = await response.content.readline()
        if not raw:
            return
        line = raw.decode().rstrip("\n")
        if line == "":
            if current.data or current.retry is not None or current.id is not None or current.event is not None:
                yield current
            current = Message()
            continue
        if line.startswith(":"):
            yield Message(comment=line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            current.id = value
        elif name == "event":
            current.event = value
        elif name == "data":
            current.data.append(value)
        elif name == "retry":
            current.retry = int(value)


async def events_of(response: aiohttp.ClientResponse) -> list[pb.RunEvent]:
    """Every event message of a stream to its end (retry and comments left out)."""
    return [m.run_event() async for m in messages(response) if m.data]


def as_json(message: pb.RunEvent) -> dict[str, object]:
    """What the gateway sends as an event's data."""
    data: dict[str, object] = json.loads(json.dumps(json_format.MessageToDict(message)))
    return data
