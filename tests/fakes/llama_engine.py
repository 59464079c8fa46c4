"""A stand-in for the local engine's process (providers/local/child.py), for what a real model cannot be made to send.

The same handshake (a config line on stdin, `{"address": ...}` on stdout, serving until stdin closes) and the
llama.cpp routes the local provider calls. Each chat completion streams the next list of `data:` payloads of the
script file named on the command line (the last list again once they run out); `/apply-template` and `/tokenize`
answer a three-token prompt. Use it with `monkeypatch.setattr(engine, "CHILD", child_args(script))`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from aiohttp import web


def child_args(script: Path) -> tuple[str, ...]:
    """The engine's CHILD arguments that run this fake on `script`."""
    return ("-m", "tests.fakes.llama_engine", str(script))


async def serve(answers: list[list[str]]) -> None:
    """Serve the scripted answers until stdin closes."""
    served = 0

    async def apply_template(_request: web.Request) -> web.Response:
        return web.json_response({"prompt": "the prompt"})

    async def tokenize(_request: web.Request) -> web.Response:
        return web.json_response({"tokens": [1, 2, 3]})

    async def chat(request: web.Request) -> web.StreamResponse:
        nonlocal served
        payloads = answers[min(served, len(answers) - 1)]
        served += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for payload in payloads:
            await response.write(b"data: " + payload.encode() + b"\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/apply-template", apply_template)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"address": f"http://127.0.0.1:{port}"}), flush=True)
    await asyncio.to_thread(sys.stdin.read)  # the engine closes our stdin to stop us
    await runner.cleanup()


if __name__ == "__main__":
    sys.stdin.readline()  # the engine's config: nothing here depends on it
    asyncio.run(serve(json.loads(Path(sys.argv[1]).read_text())))
