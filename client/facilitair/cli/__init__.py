"""The `facilitair` command."""

import os

# gRPC's C core logs to stderr on its own (TLS handshake failures, for one); the CLI says what went wrong
# itself. Set before grpc is imported; GRPC_VERBOSITY=debug (or info) in the environment brings them back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
