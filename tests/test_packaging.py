"""What another service gets from `pip install facilitair`: the stubs, the client and the CLI, nothing heavy.

The LLM SDKs and the server's dependencies are the `server` extra; importing the client side must not
load them either.
"""

from __future__ import annotations

import asyncio
import json
import sys
from importlib import metadata

from packaging.requirements import Requirement

SERVER_ONLY = {
    "openai", "anthropic", "structlog", "pydantic-settings", "genai-prices", "platformdirs",
    "grpcio-reflection", "grpcio-health-checking",
}  # fmt: skip


def test_the_base_install_requires_only_the_light_dependencies() -> None:
    requirements = [Requirement(r) for r in metadata.requires("facilitair") or []]
    base = {r.name for r in requirements if r.marker is None}
    server = {r.name for r in requirements if r.marker is not None and r.marker.evaluate({"extra": "server"})}
    assert base == {"grpcio", "protobuf", "grpcio-status", "rich"}
    assert server >= SERVER_ONLY


async def test_importing_the_client_side_loads_no_server_dependency() -> None:
    code = (
        "import sys, json\n"
        "import facilitair.client, facilitair.cli.main\n"
        "from facilitair.v1 import orchestrator_pb2, orchestrator_pb2_grpc\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} | "
        "{m for m in sys.modules if m.startswith('facilitair.')})))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    loaded = set(json.loads(out))
    assert "facilitair.client" in loaded
    assert not loaded & {"openai", "anthropic", "structlog", "pydantic_settings", "genai_prices", "httpx2"}
    assert not {m for m in loaded if m.startswith("facilitair.server")}
