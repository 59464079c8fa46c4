"""The tests' one shared harness; test modules import helpers from here, never from each other or conftest.

- `scripts`: scripted fake-LLM replies per agent (`scripted`, `default_replies`, `held`, `Script`).
- `team`: a fixed script whose every event is known in advance (`Team`), for durability and restarts.
- `events`: payload helpers (`kind`, `of_kind`, `stage_text`), `RunStream`/`collect` over the client
  library, and readers of raw gRPC calls (`read_until`, `read_rest`, `wire`, `assert_complete_log`).
- `servers`: in-process servers (`Servers`, behind the `make_server` fixture; `serving` for the `Team`).
- `processes`: `python -m facilitair.server` as a real child process (`ServerProcess`).
- `stores`: the store a test runs on (`Target`; SQLite, or PostgreSQL under `both_stores`), reaching its
  tables from outside (`execute`, `fetch`, `owners`), and the store-contract helpers.
- `pg`: a real PostgreSQL for the session and a fresh database per test.
- `cli`: the `facilitair` command as a subprocess; `terminal`: the same in a pseudo-terminal, read by pyte.
- `logs`: what the server logs, on structlog's events (`on_log`, `no_error_logs`).
- `pki`: a throwaway CA and certificates; `local_model`: the real local model's cached wheel.

The fakes (the vendors' HTTP servers) are in tests/fakes; the fixtures in tests/conftest.py.
"""
