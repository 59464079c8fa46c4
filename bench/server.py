"""The server under test with a proposed patch applied: `facilitair serve` itself, after bench/patches.py.

`python -m bench.server --try NAMES` applies the patches, then runs exactly what `python -m facilitair.server`
(= `facilitair serve`) runs, configured by the same FACILITAIR_* settings (bench/cluster.py: environment).
Without patches the harness starts `python -m facilitair.server` itself; either way every scenario measures
the server as an operator starts it (issue 26: the load scenario used to build its own server here, and two
harnesses disagreed on the same shape).
"""

from __future__ import annotations

import argparse
import os
import sys

from bench import patches


def main() -> int:
    """Apply the patches, then serve as `facilitair serve` does until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--try", dest="tries", default="", help="proposed patches to apply (bench/patches.py)")
    args = parser.parse_args()
    # As facilitair/server/__main__.py, before grpc is imported (a patch may import it).
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    loop = patches.apply([t for t in args.tries.split(",") if t])
    if loop != "auto":
        os.environ["FACILITAIR_EVENT_LOOP"] = loop
    from facilitair.server.transport.commands import main as serve  # noqa: PLC0415 - after the settings above

    return serve([])


if __name__ == "__main__":
    sys.exit(main())
