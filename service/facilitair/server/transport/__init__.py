"""gRPC: the server, the servicer, the guard interceptor, request checks and the one status table."""
