"""The benchmark harness (issue 7): the relay against a bare grpc.aio stream, under load, with the durable log.

Run it from the repository root with `python -m bench` (see docs/benchmarks.md).
"""
