"""A small backend service that uses Facilitair through the generated stubs.

It starts one run per task, follows each through the typed stubs, and reacts to the events: it
keeps a running cost per run and cancels a run whose spending passes a limit, writes each completed
run's files under an output directory, and reports every run's outcome as one JSON line.

    python examples/backend_service.py --target 127.0.0.1:50051 --out ./out --cancel-above 0.50 \\
        "Write a function that reverses a string" "Write a CSV parser"

Exit code 0 when every run completed, 1 otherwise. Needs only the client: `pip install .` in a clone, or
`pip install facilitair` from a package index (no extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import grpc

from facilitair.client import CHANNEL_OPTIONS
from facilitair.v1 import orchestrator_pb2, orchestrator_pb2_grpc


@dataclass
class Outcome:
    """What happened to one task."""

    task: str
    run_id: str = ""
    state: str = "unknown"
    cost_usd: float = 0.0
    files: int = 0
    detail: str = ""


async def follow(
    stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub,
    task: str,
    out: Path,
    cancel_above: float | None,
    metadata: tuple[tuple[str, str], ...],
) -> Outcome:
    """Start a run for `task` and react to its events until it ends."""
    outcome = Outcome(task)
    request = orchestrator_pb2.CollaborateRequest(
        task=task,
        client_request_id=str(uuid.uuid4()),  # safe to retry the call itself
        on_disconnect=orchestrator_pb2.ON_DISCONNECT_CONTINUE,
    )
    cancelled_by_us = False
    try:
        async for response in stub.Collaborate(request, metadata=metadata):
            event = response.event
            outcome.run_id = event.run_id
            kind = event.WhichOneof("payload")
            if kind == "stage_completed":
                outcome.cost_usd += event.stage_completed.usage.cost_usd
                if cancel_above is not None and outcome.cost_usd > cancel_above and not cancelled_by_us:
                    cancelled_by_us = True
                    await stub.CancelRun(orchestrator_pb2.CancelRunRequest(run_id=event.run_id), metadata=metadata)
            elif kind == "run_completed":
                outcome.state = "completed"
                outcome.files = write_files(out / event.run_id, event.run_completed.result)
            elif kind == "run_failed":
                outcome.state = "failed"
                outcome.detail = event.run_failed.message
            elif kind == "run_cancelled":
                outcome.state = "cancelled"
                outcome.detail = event.run_cancelled.reason + (" (cost limit)" if cancelled_by_us else "")
    except grpc.aio.AioRpcError as err:
        code = err.code()
        outcome.state = "error"
        outcome.detail = f"{code.name if code is not None else 'UNKNOWN'}: {err.details()}"
    return outcome


def write_files(root: Path, result: orchestrator_pb2.RunResult) -> int:
    """Write a run's artifacts under `root`, refusing paths that would leave it."""
    count = 0
    for artifact in result.artifacts:
        parts = PurePosixPath(artifact.path).parts
        if not parts or ".." in parts or PurePosixPath(artifact.path).is_absolute():
            continue
        target = root.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(artifact.content, encoding="utf-8")
        count += 1
    return count


async def main(argv: list[str]) -> int:
    """Run every task concurrently and print one JSON line per outcome."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="+")
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--cancel-above", type=float, help="cancel a run once it has cost more than this (USD)")
    parser.add_argument("--api-key", help="API key, if the server wants one")
    args = parser.parse_args(argv)
    metadata = (("authorization", f"Bearer {args.api_key}"),) if args.api_key else ()
    async with grpc.aio.insecure_channel(args.target, options=CHANNEL_OPTIONS) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        outcomes = await asyncio.gather(*(follow(stub, t, args.out, args.cancel_above, metadata) for t in args.tasks))
    for o in outcomes:
        print(json.dumps(o.__dict__), flush=True)
    return 0 if all(o.state == "completed" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
