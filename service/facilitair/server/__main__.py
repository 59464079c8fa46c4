"""`python -m facilitair.server [flags]`: serve, exactly as `facilitair serve [flags]`."""

from __future__ import annotations

import os
import sys

# As `facilitair serve` (facilitair.cli): gRPC's C core keeps its own stderr lines (a failed bind, for one) to
# itself, so that what went wrong is said once, in one line. GRPC_VERBOSITY=debug brings them back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from facilitair.server.transport.commands import main  # after the line above: grpc reads it when imported

if __name__ == "__main__":
    sys.exit(main())
