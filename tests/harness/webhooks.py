"""A webhook receiver on 127.0.0.1 (a real aiohttp server) that verifies each request with `standardwebhooks`.

Its answers are scripted per request, in order (then 200): a status, a status with headers (Retry-After,
Location), or HANG (never answer, as a receiver that stopped). Tests wait for the Nth request with `until`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

HANG = "hang"
HANG_GUARD = 60.0


def new_secret() -> str:
    """A fresh Standard Webhooks secret."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass(frozen=True)
class Answer:
    """What the receiver answers one request with."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    """One request as it arrived."""

    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool  # the signature checked out with the receiver's secret
    arrived: float  # loop time

    @property
    def id(self) -> str:
        """The webhook-id header."""
        return self.headers["webhook-id"]

    @property
    def json(self) -> dict[str, Any]:
        """The body."""
        result: dict[str, Any] = json.loads(self.body)
        return result


class Receiver:
    """An aiohttp server on 127.0.0.1:0; `async with` starts and stops it."""

    def __init__(self, secret: str, answers: Sequence[Answer | str] = ()) -> None:
        self.secret = secret
        self.answers = list(answers)
        self.requests: list[Received] = []
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The hook's URL."""
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        index = len([r for r in self.requests if r.path == request.path])
        self.requests.append(Received(request.path, headers, body, verified, asyncio.get_running_loop().time()))
        self._changed.set()
        answer = self.answers[index] if request.path == "/hook" and index < len(self.answers) else Answer()
        if answer == HANG:
            await asyncio.Event().wait()  # until the connection is dropped (the server's timeout, or its death)
        assert isinstance(answer, Answer)
        return web.Response(status=answer.status, headers=dict(answer.headers), text="ok")

    async def until(self, count: int, *, within: float = HANG_GUARD) -> list[Received]:
        """Wait (`within` is a hang guard) until `count` requests have arrived; all of them."""
        async with asyncio.timeout(within):
            while len(self.requests) < count:
                self._changed.clear()
                await self._changed.wait()
        return list(self.requests)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        # handler_cancellation: a hung answer ends when the sender drops the connection.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[-1][1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def endpoints_file(folder: Path, *tables: Mapping[str, Any]) -> Path:
    """A webhooks file with these [[endpoint]] tables."""
    lines = []
    for table in tables:
        lines.append("[[endpoint]]")
        for key, value in table.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path = folder / "webhooks.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
