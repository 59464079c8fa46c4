"""The server under test, in a process of its own: the real facilitair server, durable SQLite log, real SDK.

`python -m bench.server --db PATH --openai-url URL` prints `READY <port>` and serves until SIGTERM. Its
OpenAI provider is the real OpenAIProvider (official SDK) pointed at the bench fake. Logging is at warning
level, so the log is not what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from bench import patches
from bench.procs import announce_ready
from facilitair.server.logging_setup import configure_logging
from facilitair.server.settings import Settings
from facilitair.server.transport.app import create_server, loop_factory, tune_runtime, until_signalled

UNLIMITED = 1_000_000


async def _serve(db: str, openai_url: str, api_key: str) -> None:
    configure_logging("warning", "json")
    settings = Settings.model_validate(
        {
            "listen": "127.0.0.1:0",
            "db": db,
            "OPENAI_API_KEY": api_key,
            "OPENAI_BASE_URL": openai_url,
            # The load is one principal starting hundreds of runs at once: lift the admission limits.
            "max_runs": UNLIMITED,
            "max_runs_per_principal": UNLIMITED,
            "runs_per_minute": UNLIMITED,
        }
    )
    running = await create_server(settings)
    tune_runtime()  # as `facilitair serve` does
    announce_ready(running.port)
    try:
        await until_signalled()
    finally:
        await running.stop(0)


def main() -> None:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--openai-url", required=True)
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--try", dest="tries", default="", help="proposed patches to apply (bench/patches.py)")
    args = parser.parse_args()
    # Only what the harness sets: a developer's FACILITAIR_* (API keys, TLS, limits) would change what is measured.
    for name in [n for n in os.environ if n.startswith("FACILITAIR_")]:
        del os.environ[name]
    loop = patches.apply([t for t in args.tries.split(",") if t])
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:  # as `facilitair serve` does
        runner.run(_serve(args.db, args.openai_url, args.api_key))


if __name__ == "__main__":
    main()
