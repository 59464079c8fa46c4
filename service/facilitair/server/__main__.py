"""`python -m facilitair.server [flags]`: serve, exactly as `facilitair serve [flags]`."""

from __future__ import annotations

import sys

from facilitair.server.transport.commands import main

if __name__ == "__main__":
    sys.exit(main())
