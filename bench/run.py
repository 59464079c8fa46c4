"""`python -m bench`: run every scenario, write bench/results/<time>.json and print the table.

Scenarios (issue 7): `throughput` (goal 1), `load` (goal 2, and RSS per active run for goal 3),
`watchers` (goal 3, idle watchers), `first-event` and `replay` (goal 4), `sqlite` (goal 5).
Issue 13 (bench/replicas.py, on PostgreSQL): `replicas` (the load on SQLite, PostgreSQL --workers 1 and 2,
and bare), `cross-watch` (a watcher on another replica against one on the owner), `takeover` (SIGKILL of the
owner, 20 times).
Issue 26 (bench/remote_db.py, on PostgreSQL): `db-rtt` (100 runs at 10 tokens/s started at once on one replica
whose database is behind the bench's delay proxy, at each `--db-rtt` round-trip time).
Issue 23 (bench/gateway.py): `sse-cpu` (CPU per event of an SSE watcher against a WatchRun watcher) and
`sse-watchers` (memory per idle SSE watcher).
`--quick` runs them all at a tiny size (what the test suite does: it proves the harness works, it measures
nothing). `--big` adds the 1000-runs-at-10-tokens/s load (to `load` and to `replicas`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.cluster import Postgres, postgres
from bench.compare import RECORDED, compare, comparison_table, figures, read_recorded, record, regressed
from bench.gateway import sse_cpu, sse_idle_watchers, sse_live_cpu
from bench.lab import open_lab
from bench.lifecycle import first_event, idle_watchers, replay
from bench.patches import PATCHES
from bench.remote_db import db_rtt
from bench.replicas import cross_watch, replica_load, takeover
from bench.report import table
from bench.storage import sqlite_write_path
from bench.streaming import LoadShape, load, throughput

RESULTS = Path(__file__).parent / "results"
SCENARIOS = (
    "throughput",
    "load",
    "watchers",
    "first-event",
    "replay",
    "sse-cpu",
    "sse-watchers",
    "sqlite",
    "replicas",
    "cross-watch",
    "takeover",
    "db-rtt",
)
# The scenarios that need PostgreSQL (bench/cluster.py finds one as the tests do).
ON_POSTGRES = {"replicas", "cross-watch", "takeover", "db-rtt"}


def _shape(text: str, seconds: float, size: int) -> LoadShape:
    runs, _, rate = text.partition("@")
    return LoadShape(int(runs), float(rate), seconds, size)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; every size has a default for the full run and a tiny one for --quick."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes: proves the harness runs, measures nothing")
    p.add_argument("--big", action="store_true", help="also run the load 1000@10")
    p.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    p.add_argument("--repeats", type=int, help="repeats per measurement (default 5; load 3; quick 1)")
    p.add_argument("--size", type=int, default=20, help="characters per token (at least 20: the stamp)")
    p.add_argument("--tokens", type=int, help="Coder tokens of the throughput run (default 20000)")
    p.add_argument("--load", action="append", help="RUNS@RATE, repeatable (default 200@25)")
    p.add_argument("--load-seconds", type=float, help="how long each load run streams (default 20)")
    p.add_argument("--watchers", type=int, help="idle watchers to attach (default 1000)")
    p.add_argument("--calls", type=int, help="calls timed for the first event (default 100)")
    p.add_argument("--replay-events", type=int, help="events of the replayed run (default 10000)")
    p.add_argument("--cross", help="RUNS@RATE of the cross-replica watcher scenario (default 100@10)")
    p.add_argument("--kills", type=int, help="owner kills of the takeover scenario (default 20)")
    p.add_argument("--lease", type=float, help="FACILITAIR_LEASE_SECONDS of the takeover scenario (default 10)")
    p.add_argument(
        "--db-rtt", help="MS[,MS...]: round-trip times to PostgreSQL of the db-rtt scenario (default 0,2,10,40)"
    )
    p.add_argument("--db-load", help="RUNS@RATE of the db-rtt scenario (default 100@10)")
    p.add_argument("--profile", action="store_true", help="sample every server with py-spy (perturbs timings)")
    p.add_argument(
        "--try",
        dest="tries",
        default="",
        help=f"another configuration for the server ({', '.join(PATCHES)}; see bench/patches.py); none by default",
    )
    p.add_argument("--out", type=Path, help="the JSON file to write (default bench/results/<time>.json)")
    p.add_argument(
        "--against", type=Path, default=RECORDED, help="the recorded figures to compare with (default %(default)s)"
    )
    p.add_argument("--check", action="store_true", help="exit 1 when a figure is worse than recorded (REGRESSED)")
    p.add_argument("--record", action="store_true", help="write this invocation's medians into --against, for a commit")
    p.add_argument("--compare", type=Path, metavar="RESULTS", help="run nothing: compare a results file")
    args = p.parse_args(argv)
    if args.record and (args.quick or args.compare):
        p.error("--record keeps measured figures: not with --quick (which measures nothing) or --compare")
    return args


def _params(args: argparse.Namespace) -> dict[str, Any]:
    q = args.quick
    loads = args.load or (["3@50"] if q else ["200@25"])
    if args.big and not q:
        loads.append("1000@10")
    return {
        "repeats": args.repeats or (1 if q else 5),
        "load_repeats": args.repeats or (1 if q else 3),
        "size": args.size,
        "tokens": args.tokens or (200 if q else 20_000),
        "loads": loads,
        "load_seconds": args.load_seconds or (2.0 if q else 20.0),
        "watchers": args.watchers or (5 if q else 1000),
        "sse_live_watchers": 2 if q else 20,
        "calls": args.calls or (3 if q else 100),
        "replay_events": args.replay_events or (100 if q else 10_000),
        "sqlite_seconds": 0.2 if q else 2.0,
        "sqlite_events": 2_000 if q else 100_000,
        "cross": args.cross or ("3@20" if q else "100@10"),
        "kills": args.kills or (1 if q else 20),
        "lease": args.lease or (1.0 if q else 10.0),
        "db_rtt": [float(x) for x in (args.db_rtt or ("0,10" if q else "0,2,10,40")).split(",")],
        "db_load": args.db_load or ("3@20" if q else "100@10"),
    }


def _machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every scenario asked for, in order; the results as one JSON-able dict."""
    params = _params(args)
    only = set(args.only.split(","))
    unknown = only - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "machine": _machine(),
        "params": params,
        "tries": args.tries,
        "results": {},
    }
    res = out["results"]
    started = time.monotonic()
    RESULTS.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="facilitair-bench-"))
        pg: Postgres | None = stack.enter_context(postgres()) if only & ON_POSTGRES else None
        tries = tuple(t for t in args.tries.split(",") if t)
        async with open_lab(Path(tmp), RESULTS if args.profile else None, tries) as lab:
            size, reps = params["size"], params["repeats"]
            if "throughput" in only:
                res["throughput"] = await throughput(lab, tokens=params["tokens"], size=size, repeats=reps)
            if "load" in only:
                res["load"] = [
                    await load(lab, _shape(s, params["load_seconds"], size), repeats=params["load_repeats"])
                    for s in params["loads"]
                ]
            if "watchers" in only:
                res["watchers"] = await idle_watchers(lab, watchers=params["watchers"])
            if "first-event" in only:
                res["first_event"] = await first_event(lab, calls=params["calls"])
            if "replay" in only:
                res["replay"] = await replay(lab, events=params["replay_events"], size=size, repeats=reps)
            if "sse-cpu" in only:
                res["sse_cpu"] = await sse_cpu(lab, events=params["replay_events"], size=size, repeats=reps)
                res["sse_live_cpu"] = await sse_live_cpu(
                    lab, tokens=params["tokens"] // 4, size=size, watchers=params["sse_live_watchers"], repeats=reps
                )
            if "sse-watchers" in only:
                res["sse_watchers"] = await sse_idle_watchers(lab, watchers=params["watchers"])
            if pg is not None:
                out["postgres"] = pg.server.how
                shapes = [_shape(s, params["load_seconds"], size) for s in params["loads"]]
                if "replicas" in only:
                    res["replicas"] = [await replica_load(lab, pg, s, repeats=params["load_repeats"]) for s in shapes]
                if "cross-watch" in only:
                    cross = _shape(params["cross"], params["load_seconds"], size)
                    res["cross_watch"] = await cross_watch(lab, pg, cross, repeats=params["load_repeats"])
                if "takeover" in only:
                    res["takeover"] = await takeover(lab, pg, kills=params["kills"], lease=params["lease"])
                if "db-rtt" in only:
                    shape = _shape(params["db_load"], params["load_seconds"], size)
                    res["db_rtt"] = await db_rtt(lab, pg, shape, params["db_rtt"], repeats=params["load_repeats"])
            if lab.profiles:
                out["profiles"] = lab.profiles
        if "sqlite" in only:
            res["sqlite"] = await sqlite_write_path(
                Path(tmp), seconds=params["sqlite_seconds"], events=params["sqlite_events"], size=size
            )
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    return out


def _clean(value: Any) -> Any:
    """NaN is not JSON: write it as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _commit() -> str:
    """The commit measured, marked when the work tree differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=RESULTS.parent, capture_output=True, text=True, check=True).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        return head + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no").strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run (or read `--compare`'s file), write the JSON, print the table and the comparison with the record."""
    args = parse_args(argv)
    if args.compare:
        results = json.loads(args.compare.read_text(encoding="utf-8"))
    else:
        results = asyncio.run(run(args))
        results["commit"] = _commit()
    recorded = read_recorded(args.against)
    rows = compare(figures(recorded["results"]), figures(results["results"]))
    results["comparison"] = {
        "against": str(args.against),
        "figures": [dataclasses.asdict(r) for r in rows],
        "regressed": [r.name for r in regressed(rows)],
    }
    if not args.compare:
        path = args.out or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_clean(results), indent=2) + "\n", encoding="utf-8")
        print(table(results))
        print(f"\nwritten to {path}\n")
    print(comparison_table(rows, str(args.against)))
    if args.record:
        new = _clean(record(recorded, results, results["commit"]))
        args.against.write_text(json.dumps(new, indent=2) + "\n", encoding="utf-8")
        print(f"\nrecorded in {args.against}: commit it to make these the figures compared with")
    return 1 if args.check and regressed(rows) else 0
