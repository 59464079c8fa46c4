"""The engine process: llama.cpp's native server (from the xllamacpp wheel) on a loopback port, for one model.

Started by `engine.LocalEngine` as `python -m facilitair.server.providers.local.child`. It reads its settings
as one JSON line on stdin (the API key too, so it never shows in the process list), prints one JSON line with
its address once the model is loaded, then serves until stdin closes: when the Facilitair server stops or
dies, the pipe closes and this process goes with it.

Why a process of its own: llama.cpp's server installs its own SIGINT/SIGTERM handlers (the first stops its
loop, the second calls exit(1)), which in-process would take the graceful stop away from the gRPC server;
its log lines are its own format; and a user's GGUF that crashes the loader takes down this process only.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _params(config: dict[str, Any]) -> Any:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = config["model"]
    params.n_parallel = config["slots"]
    # llama.cpp divides n_ctx evenly between the slots: each gets `context` tokens.
    params.n_ctx = config["slots"] * config["context"]
    params.cont_batching = True
    params.port = 0  # any free port; the address is reported back
    params.hostnames = ["127.0.0.1"]
    params.api_keys = [config["api_key"]]
    params.endpoint_slots = True
    params.endpoint_metrics = True
    params.ui = False
    params.warmup = False  # the first request warms up; starting stays under a second for small models
    if config.get("threads"):
        params.cpuparams.n_threads = config["threads"]
        params.cpuparams_batch.n_threads = config["threads"]
    return params


def main() -> int:
    """Load the model, report the address, serve until stdin closes."""
    config = json.loads(sys.stdin.readline())
    try:
        import xllamacpp

        server = xllamacpp.Server(_params(config))
    except Exception as exc:  # reported to the parent, which decides what the caller sees
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"address": server.listening_address}), flush=True)
    sys.stdin.read()  # returns at EOF: the parent closed the pipe or died
    del server  # stops llama.cpp's loop and joins its threads
    return 0


if __name__ == "__main__":
    sys.exit(main())
