"""`facilitair serve --workers N`: N server processes on one port, each a replica on the shared store.

One Python process relays tokens on one core (its event loop); N processes use N cores. They share the
listening port through SO_REUSEPORT (the kernel spreads new connections over them) and everything else
through the store, as replicas on different machines do. SQLite is one process's file, so workers need
PostgreSQL. This process only starts the workers, passes SIGINT/SIGTERM on (each stops gracefully, handing
its runs over), and starts a worker again if one dies.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import structlog

from facilitair.server.logging_setup import configure_logging
from facilitair.server.settings import ConfigError, Settings

log = structlog.get_logger(__name__)

# A worker that dies is started again after this long (a crash loop costs a log line a second, not a core).
RESTART_DELAY = 1.0
# On SIGTERM the workers get their own grace plus this long to hand their runs over before they are killed.
STOP_MARGIN = 15.0


def check_workers(settings: Settings) -> None:
    """Refuse --workers where it cannot work."""
    if settings.workers > 1 and settings.database_url is None:
        raise ConfigError(
            "--workers needs a shared store: give --database-url postgresql://... (FACILITAIR_DATABASE_URL); "
            "a SQLite file belongs to one process"
        )


def run_workers(settings: Settings, given: Mapping[str, Any]) -> int:
    """Start `settings.workers` servers on one port and keep them running until SIGINT or SIGTERM."""
    configure_logging(settings.log_level, settings.log_format, replica="workers")
    listen = _fixed_port(settings.listen)
    env = _worker_environment(given, listen)
    if settings.http_enabled:  # every worker serves the HTTP gateway too, on one port shared the same way
        env["FACILITAIR_HTTP_LISTEN"] = _fixed_port(settings.http_listen)
    named = str(given.get("replica_id") or os.environ.get("FACILITAIR_REPLICA_ID") or "")
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    workers = [_start(env, n, named) for n in range(settings.workers)]
    log.info("workers_serving", address=listen, workers=[w.pid for w in workers])
    while not stopping:
        for n, worker in enumerate(workers):
            code = worker.poll()
            if code is not None and not stopping:
                log.warning("worker_exited", pid=worker.pid, code=code, restart_in=RESTART_DELAY)
                time.sleep(RESTART_DELAY)
                workers[n] = _start(env, n, named)
        time.sleep(0.2)
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + settings.grace_seconds + STOP_MARGIN
    for worker in workers:
        try:
            worker.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker_killed", pid=worker.pid)
            worker.kill()
            worker.wait()
    log.info("workers_stopped")
    return 0


def _fixed_port(listen: str) -> str:
    """Port 0 means "any": one free port is picked here so that every worker binds the same one."""
    host, _, port = listen.rpartition(":")
    if port != "0":
        return listen
    with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as sock:
        sock.bind((host.strip("[]"), 0))
        return f"{host}:{sock.getsockname()[1]}"


def _worker_environment(given: Mapping[str, Any], listen: str) -> dict[str, str]:
    """The flags given to `serve`, as the FACILITAIR_* variables every worker reads, plus the shared port."""
    env = dict(os.environ)
    for name, value in given.items():
        if value is not None:
            env[f"FACILITAIR_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env.update(FACILITAIR_LISTEN=listen, FACILITAIR_WORKERS="1", FACILITAIR_SHARE_PORT="true")
    # A worker whose parent is gone (killed) stops by itself rather than serve on unsupervised.
    env["FACILITAIR_PARENT_PID"] = str(os.getpid())
    # Each worker is its own replica: host-pid, unless the operator named them (then name-1, name-2, ...).
    env.pop("FACILITAIR_REPLICA_ID", None)
    return env


def _start(env: dict[str, str], index: int, named: str) -> subprocess.Popen[bytes]:
    child_env = dict(env)
    if named:
        child_env["FACILITAIR_REPLICA_ID"] = f"{named}-{index + 1}"
    worker = subprocess.Popen([sys.executable, "-m", "facilitair.server"], env=child_env)
    log.info("worker_started", pid=worker.pid, index=index + 1)
    return worker
