"""gRPC's words for a broken connection, as the client says them (the messages are gRPC's own, seen in the tests)."""

from __future__ import annotations

import pytest

from facilitair.client._errors import connection_failure

TARGET = "127.0.0.1:50051"


@pytest.mark.parametrize(
    ("grpc_says", "we_say"),
    [
        (
            "connections to all backends failing; last error: UNKNOWN: ipv4:127.0.0.1:50051: Failed to connect to "
            "remote host: Connection refused",
            f"nothing listens at {TARGET} (connection refused)",
        ),
        ("Cancelling all calls", f"the server at {TARGET} closed the connection (it is stopping or restarting)"),
        ("Stream removed (Socket closed)", f"the connection to {TARGET} was cut"),
        ("keepalive watchdog timeout", f"the server at {TARGET} stopped answering (keepalive)"),
        (
            "failed to connect to all addresses; last error: UNKNOWN: Connection timed out",
            f"connecting to {TARGET} timed out",
        ),
        ("the store cannot write: disk full", "the store cannot write: disk full"),  # not gRPC's: kept
    ],
)
def test_grpc_connection_messages_become_ours(grpc_says: str, we_say: str) -> None:
    assert connection_failure(grpc_says, TARGET) == we_say
