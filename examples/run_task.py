"""Run one task with the client library, showing the model's text as it comes: the README's example.

    python examples/run_task.py 127.0.0.1:50051 "Write a function that reverses a string"

Exit code 0 when the run completed, 1 when it failed or was cancelled, 2 when the call itself failed.
"""

import asyncio
import sys

from facilitair.client import Client, EventKind, FacilitairError, RunCancelled, RunEvent, RunFailed, event_kind


def show(event: RunEvent) -> None:
    """Print the model's text as it streams."""
    if event_kind(event) is EventKind.TOKEN_DELTA:
        print(event.token_delta.text, end="", flush=True)


async def main(target: str, task: str) -> int:
    """Run `task` and report its outcome."""
    async with Client(target) as client:
        try:
            result = await client.run(task, context={"language": "python"}, on_event=show)
        except RunFailed as err:  # the run ended with run_failed: err.code, err.message, err.usage
            print(f"\nrun {err.run_id} failed: {err.code.name}: {err.message}", file=sys.stderr)
            return 1
        except RunCancelled as err:
            print(f"\nrun {err.run_id} cancelled: {err.cancel_reason}", file=sys.stderr)
            return 1
        except FacilitairError as err:  # the call itself failed: no server, refused, bad arguments
            print(err.message, file=sys.stderr)
            return 2
    verdict = "approved" if result.approved else "NOT approved"
    print(f"\nrun {result.run_id}: {len(result.files)} files, review {verdict}, ${result.usage.cost_usd:.4f}")
    for file in result.files:
        print(f"  {file.path} ({len(file.content.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
