"""One llama.cpp engine process per model file, and the HTTP calls the local provider makes to it.

The engine is llama.cpp's own server (continuous batching over `slots` parallel sequences, each with a
context window of `context` tokens). Requests beyond the free slots wait in its queue and produce nothing
until a slot frees; a request whose connection closes is cancelled, waiting or generating.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import secrets
import subprocess
import sys
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog

log = structlog.get_logger(__name__)

START_TIMEOUT = 120.0  # loading a multi-GB GGUF from a cold disk; SmolLM2 takes about a second
STOP_TIMEOUT = 5.0
_CONNECT_TIMEOUT = 5.0
_CONTROL_TIMEOUT = 30.0  # template, tokenize, slots, metrics: quick calls, but they queue behind nothing
_STDERR_LINES = 40
# The engine process's arguments to Python: llama.cpp's server (child.py). The tests put a fake engine (the same
# handshake and HTTP routes, scripted answers) in its place to send what a real model cannot be made to.
CHILD: tuple[str, ...] = ("-m", "facilitair.server.providers.local.child")


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """How to run an engine: slots, context window per slot (tokens), CPU threads (None: llama.cpp's choice)."""

    slots: int
    context: int
    threads: int | None = None


class EngineError(Exception):
    """The engine could not start, or answered with an error (`status` 0 when it never answered)."""

    def __init__(self, message: str, *, status: int = 0, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {}


class LocalEngine:
    """A child process serving one GGUF model, and an HTTP session to it."""

    def __init__(self, model: Path, options: EngineOptions) -> None:
        self.model = model
        self.options = options
        self._key = secrets.token_urlsafe(24)  # only this process may use the engine's port
        self._process: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._address = ""
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._drain: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The engine process's id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the engine process is alive."""
        return self._process is not None and self._process.poll() is None

    async def start(self) -> None:
        """Start the process and wait until the model is loaded; EngineError when it cannot be."""
        config = {"model": str(self.model), "slots": self.options.slots, "context": self.options.context,
                  "threads": self.options.threads, "api_key": self._key}  # fmt: skip
        # subprocess.Popen, not the event loop's subprocess support: uvloop's forks with gRPC's fork
        # handlers armed (they log a warning line), Popen uses vfork and execs at once.
        process = self._process = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, *CHILD],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C at the terminal is the server's to handle, not the engine's
        )  # fmt: skip
        assert process.stdin is not None
        assert process.stdout is not None
        self._drain = threading.Thread(target=self._drain_stderr, args=(process,), daemon=True)
        self._drain.start()
        try:
            process.stdin.write(json.dumps(config).encode() + b"\n")
            process.stdin.flush()
            async with asyncio.timeout(START_TIMEOUT):
                # A thread blocked in readline returns when the process is killed (its pipe closes).
                line = await asyncio.to_thread(process.stdout.readline)
        except (TimeoutError, OSError):
            await self.aclose()
            raise EngineError(f"the engine did not load {self.model.name} within {START_TIMEOUT:g} s") from None
        try:
            ready = json.loads(line) if line else {}
        except ValueError:
            ready = {}
        if "address" not in ready:
            await self.aclose()
            log.warning("local_engine_failed", model=str(self.model), error=ready.get("error"), stderr=self.stderr())
            raise EngineError(f"the engine could not load {self.model.name}")
        self._address = ready["address"]
        self._session = aiohttp.ClientSession(
            self._address,
            headers={"Authorization": f"Bearer {self._key}"},
            timeout=aiohttp.ClientTimeout(total=None, connect=_CONNECT_TIMEOUT),
            # A new connection per request: llama.cpp's HTTP server drops idle keep-alive connections after
            # a few seconds, and a request sent on one it just dropped would fail for nothing. Loopback is cheap.
            connector=aiohttp.TCPConnector(force_close=True),
        )
        log.info("local_engine_started", model=str(self.model), pid=process.pid, slots=self.options.slots,
                 context=self.options.context)  # fmt: skip

    def stderr(self) -> list[str]:
        """The engine's last log lines (for the server log when it fails)."""
        return list(self._stderr)

    def _drain_stderr(self, process: subprocess.Popen[bytes]) -> None:
        """Keep the engine's last log lines (a thread: the pipe must be read or the engine blocks on it)."""
        assert process.stderr is not None
        for raw in process.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip())

    async def aclose(self) -> None:
        """Close the session, then end the process: stdin closed, then SIGKILL if it does not go in time."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            await asyncio.to_thread(process.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
        if self._drain is not None:
            await asyncio.to_thread(self._drain.join, STOP_TIMEOUT)
            self._drain = None
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()

    # -- HTTP ----------------------------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or not self.running:
            raise EngineError("the engine is not running")
        return self._session

    async def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=_CONTROL_TIMEOUT)
        async with self._http().request(method, path, json=body, timeout=timeout) as response:
            data = await response.json(content_type=None)
            if response.status != 200:
                raise EngineError(f"{path} answered {response.status}", status=response.status, body=data)
            return data

    async def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """How many tokens the model's chat template makes of these messages (what the context must hold)."""
        templated = await self._json("POST", "/apply-template", {"messages": messages})
        tokens = await self._json("POST", "/tokenize", {"content": templated["prompt"], "add_special": True,
                                                        "parse_special": True})  # fmt: skip
        return len(tokens["tokens"])

    async def slots(self) -> list[dict[str, Any]]:
        """The engine's own view of its slots (`is_processing` per slot)."""
        data: list[dict[str, Any]] = await self._json("GET", "/slots")
        return data

    async def metrics(self) -> dict[str, float]:
        """The engine's Prometheus metrics (`llamacpp:requests_processing`, `...deferred`, token counters)."""
        timeout = aiohttp.ClientTimeout(total=_CONTROL_TIMEOUT)
        async with self._http().get("/metrics", timeout=timeout) as response:
            text = await response.text()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    values[name] = float(value)
        return values

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A whole chat completion in one answer (no streaming): the reference a stream can be checked against."""
        timeout = aiohttp.ClientTimeout(total=None, connect=_CONNECT_TIMEOUT)
        async with self._http().post("/v1/chat/completions", json={**body, "stream": False}, timeout=timeout) as r:
            data: dict[str, Any] = await r.json(content_type=None)
            if r.status != 200:
                raise EngineError(f"chat answered {r.status}", status=r.status, body=data.get("error") or {})
            return data

    async def chat(self, body: dict[str, Any], read_timeout: float | None) -> AsyncGenerator[bytes, None]:
        """Stream a chat completion: the body's bytes as they arrive, OpenAI's format (chat_chunks.py reads them).

        Closing this generator closes the connection, which llama.cpp takes as a cancel of the request.
        """
        timeout = aiohttp.ClientTimeout(total=None, connect=_CONNECT_TIMEOUT, sock_read=read_timeout)
        async with self._http().post("/v1/chat/completions", json=body, timeout=timeout) as response:
            try:
                if response.status != 200:
                    try:
                        error = (await response.json(content_type=None)).get("error") or {}
                    except (ValueError, aiohttp.ContentTypeError):
                        error = {}
                    raise EngineError(f"chat answered {response.status}", status=response.status, body=error)
                async for received in response.content.iter_any():
                    yield received
            finally:
                response.close()  # not release(): an unfinished stream must drop the connection to cancel
