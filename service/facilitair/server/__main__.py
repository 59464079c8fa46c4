"""`python -m facilitair.server`: serve with settings from FACILITAIR_* and the SDKs' variables only."""

from __future__ import annotations

import asyncio
import sys

from pydantic import ValidationError

from facilitair.server.settings import ConfigError, Settings
from facilitair.server.transport.app import loop_factory, serve


def main() -> int:
    """Serve until SIGINT/SIGTERM; exit 2 on a configuration error."""
    try:
        settings = Settings()
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings))
    except (ConfigError, ValidationError) as exc:
        print(f"facilitair: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
