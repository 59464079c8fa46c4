"""The baseline: a bare grpc.aio server-streaming RPC, no orchestrator, no store, no provider.

`python -m bench.baseline` serves OrchestratorService.WatchRun only, with the same messages the real server
sends for tokens (a WatchRunResponse holding a token_delta RunEvent with a uuid run_id, seq, time and a stamped
text of the same size), so that the only difference left is everything facilitair does. The request's run_id
field carries what to send: `Spec.encode()`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from bench.fake import MIN_SIZE, stamped
from bench.procs import announce_ready
from facilitair.server.transport.app import loop_factory
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Spec:
    """count messages of a `size`-character text, at `rate` per second (0: as fast as possible)."""

    count: int
    size: int = MIN_SIZE
    rate: float = 0.0

    def encode(self) -> str:
        """As the run_id of a WatchRunRequest."""
        return f"{self.count}:{self.size}:{self.rate}"

    @classmethod
    def decode(cls, text: str) -> Spec:
        """Read back what encode wrote."""
        count, size, rate = text.split(":")
        return cls(int(count), int(size), float(rate))


class BareServicer(pb_grpc.OrchestratorServiceServicer):
    """WatchRun streams token events built on the spot; nothing else."""

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.WatchRunResponse]:
        """Stream `Spec.count` token events."""
        spec = Spec.decode(request.run_id)
        run_id = str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        start = loop.time()
        for seq in range(1, spec.count + 1):
            if spec.rate > 0:
                delay = start + (seq - 1) / spec.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            event = pb.RunEvent(run_id=run_id, seq=seq, token_delta=pb.TokenDelta(stage=2, text=stamped(spec.size)))
            event.time.FromNanoseconds(time.time_ns())
            yield pb.WatchRunResponse(event=event)


async def _serve() -> None:
    server = grpc.aio.server()
    pb_grpc.add_OrchestratorServiceServicer_to_server(BareServicer(), server)  # type: ignore[abstract]  # WatchRun only
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    announce_ready(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    """Serve until SIGTERM."""
    argparse.ArgumentParser(description=__doc__).parse_args()
    # The event loop the server runs on (uvloop's when installed), so that the loop is not the difference.
    with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
        runner.run(_serve())


if __name__ == "__main__":
    main()
