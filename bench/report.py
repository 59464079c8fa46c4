"""The results as a Markdown table: each measurement, the server, the bare baseline, the ratio and the goal."""

from __future__ import annotations

import math
from typing import Any

Row = tuple[str, str, str, str, str]


def _f(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}{unit}"
    return f"{value:.{digits}f}{unit}"


def _goal(met: bool | None, text: str) -> str:
    if met is None:
        return text
    return f"{text}: {'met' if met else 'MISSED'}"


def _ok(value: Any, check: Any) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(check(value))


def _throughput(r: dict[str, Any]) -> list[Row]:
    t = r["tokens_per_s"]
    return [
        (
            f"1. one run, {r['tokens']} tokens as fast as possible: tokens/s per token",
            _f(t["server"]),
            _f(t["baseline"]),
            _f(r["ratio_server"], "x", 2),
            _goal(_ok(r["ratio_server"], lambda v: v >= 0.8), ">= 0.8x"),
        ),
        (
            f"1. same, coalesced ({_f(r['tokens_per_coalesced_message'])} tokens/message)",
            _f(t["server_coalesced"]),
            _f(t["baseline"]),
            _f(r["ratio_coalesced"], "x", 2),
            _goal(_ok(r["ratio_coalesced"], lambda v: v >= 3), ">= 3x"),
        ),
    ]


def _load(r: dict[str, Any]) -> list[Row]:
    s, b = r["server"], r["baseline"]
    name = f"{r['runs']} runs @ {r['rate']:g} tok/s"
    limit = 20.0 if r["runs"] <= 200 else 50.0
    return [
        (f"2. {name}: p50 relay latency (ms)", _f(s["p50_ms"]), _f(b["p50_ms"]), _f(r["ratio_p50"], "x", 2), ""),
        (
            f"2. {name}: p99 relay latency (ms)",
            _f(s["p99_ms"]),
            _f(b["p99_ms"]),
            _f(r["ratio_p99"], "x", 2),
            _goal(_ok(s["p99_ms"], lambda v: v <= limit), f"<= {limit:g} ms"),
        ),
        (
            f"2. {name}: delivered tokens/s (offered {r['runs'] * r['rate']:,.0f}) (tokens missing)",
            f"{_f(s['delivered_tokens_per_s'])} ({_f(s.get('tokens_missing'), digits=0)})",
            _f(b["delivered_tokens_per_s"]),
            "",
            "",
        ),
        (f"2. {name}: server CPU (% of one core)", _f(s["cpu_percent"]), _f(b["cpu_percent"]), "", ""),
        (
            f"2. {name}: time to first event p50 / p99 (ms), during the ramp",
            f"{_f(s['first_event_p50_ms'])} / {_f(s['first_event_p99_ms'])}",
            f"{_f(b['first_event_p50_ms'])} / {_f(b['first_event_p99_ms'])}",
            "",
            "",
        ),
        (
            f"3. {name}: server RSS per active run (KiB)",
            _f(s["rss_per_run_kib"]),
            "",
            "",
            _goal(_ok(s["rss_per_run_kib"], lambda v: v <= 256), "<= 256 KB"),
        ),
    ]


def _lifecycle(res: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    if "watchers" in res:
        w = res["watchers"]
        rows.append(
            (
                f"3. server RSS per idle watcher, {w['watchers']} watchers (KiB)",
                _f(w["kib_per_watcher"]),
                "",
                "",
                _goal(_ok(w["kib_per_watcher"], lambda v: v <= 50), "<= 50 KB"),
            )
        )
    if "sse_cpu" in res:
        c = res["sse_cpu"]
        rows.append(
            (
                f"23. server CPU per event, SSE / WatchRun watcher (us), {c['events']}-event replay",
                _f(c["us_per_event"]["sse"], digits=1),
                _f(c["us_per_event"]["watchrun"], digits=1),
                _f(c["ratio"], "x", 2),
                _goal(_ok(c["ratio"], lambda v: v <= 1.5), "<= 1.5x"),
            )
        )
    if "sse_live_cpu" in res:
        c = res["sse_live_cpu"]
        rows.append(
            (
                f"23. same, live run of {c['events']} events, {c['watchers']} watchers (us per event per watcher)",
                _f(c["us_per_event_per_watcher"]["sse"], digits=1),
                _f(c["us_per_event_per_watcher"]["watchrun"], digits=1),
                _f(c["ratio"], "x", 2),
                _goal(_ok(c["ratio"], lambda v: v <= 1.5), "<= 1.5x"),
            )
        )
    if "sse_watchers" in res:
        w = res["sse_watchers"]
        rows.append(
            (
                f"23. server RSS per idle SSE watcher, {w['watchers']} watchers (KiB)",
                _f(w["kib_per_watcher"]),
                "",
                "",
                _goal(_ok(w["kib_per_watcher"], lambda v: v < 50), "< 50 KB"),
            )
        )
    if "first_event" in res:
        f = res["first_event"]
        rows.append(
            (
                f"4. time to first event p50 / p99 (ms), {f['calls']} calls one at a time",
                f"{_f(f['server_p50_ms'], digits=2)} / {_f(f['server_p99_ms'], digits=2)}",
                f"{_f(f['baseline_p50_ms'], digits=2)} / {_f(f['baseline_p99_ms'], digits=2)}",
                _f(f["ratio_p50"], "x", 2),
                "",
            )
        )
    if "replay" in res:
        r = res["replay"]
        for key, label, ratio in (
            ("server", "", "ratio_server"),
            ("server_coalesced", ", coalesced", "ratio_coalesced"),
        ):
            rows.append(
                (
                    f"4. replay of a finished {r['events']}-event run (ms){label}",
                    _f(r["ms"][key]),
                    _f(r["ms"]["baseline"]),
                    _f(r[ratio], "x", 2),
                    _goal(_ok(r["ms"][key], lambda v: v <= 200), "<= 200 ms"),
                )
            )
    return rows


def _sqlite(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [
        (f"5. SQLite, {b['batch']} event(s) per durable commit: events/s", _f(b["events_per_s"]), "", "", "")
        for b in r["fixed_batches"]
    ]
    e = r["event_log"]
    rows.append(
        (
            f"5. EventLog group commit, {e['runs']} runs appending: events/s ({_f(e['events_per_commit'])}/commit)",
            _f(e["events_per_s"]),
            "",
            _f(r["group_commit_gain"], "x", 1) + " vs 1/commit",
            "",
        )
    )
    return rows


_CONFIG_NAMES = {
    "sqlite": "SQLite, 1 process",
    "postgres_workers_1": "PostgreSQL --workers 1",
    "postgres_workers_2": "PostgreSQL --workers 2",
}


def _replicas(r: dict[str, Any]) -> list[Row]:
    b = r["configs"]["baseline"]
    shape = f"{r['runs']} runs @ {r['rate']:g} tok/s"
    offered = r["runs"] * r["rate"]
    rows: list[Row] = []
    for key, label in _CONFIG_NAMES.items():
        c = r["configs"][key]
        goal_shape = key == "postgres_workers_2" and r["runs"] <= 200
        whole = _ok(c["tokens_missing"], lambda v: v == 0) if goal_shape else None
        fast = _ok(c["p99_ms"], lambda v: v <= 20) if goal_shape else None
        rows += [
            (
                f"13. {shape}, {label}: delivered tok/s of {offered:,.0f} offered (tokens missing)",
                f"{_f(c['delivered_tokens_per_s'])} ({_f(c['tokens_missing'], digits=0)})",
                f"{_f(b['delivered_tokens_per_s'])} ({_f(b['tokens_missing'], digits=0)})",
                "",
                _goal(whole, "every token") if goal_shape else "",
            ),
            (
                f"13. {shape}, {label}: p50 / p99 relay latency (ms)",
                f"{_f(c['p50_ms'])} / {_f(c['p99_ms'])}",
                f"{_f(b['p50_ms'])} / {_f(b['p99_ms'])}",
                "",
                _goal(fast, "p99 <= 20 ms") if goal_shape else "",
            ),
            (
                f"13. {shape}, {label}: CPU per relayed token, server (+ PostgreSQL) (us)",
                _f(c["cpu_us_per_token"]),
                _f(b["cpu_us_per_token"]),
                _f(c["cpu_ratio"], "x", 2),
                _goal(_ok(c["cpu_ratio"], lambda v: v <= 2), "<= 2x") if key.startswith("postgres") else "",
            ),
            (
                f"13. {shape}, {label}: RSS per active run (KiB)",
                _f(c["rss_per_run_kib"]),
                "",
                "",
                "",
            ),
        ]
    need = r["configs"]["postgres_workers_2"]["cpu_us_per_token"] * 10_000 / 1e6
    rows.append(
        (f"13. cores 10,000 tok/s needs at this CPU per token ({shape}, --workers 2)", _f(need, digits=2), "", "", "")
    )
    return rows


def _cross(r: dict[str, Any]) -> list[Row]:
    return [
        (
            f"13. {r['runs']} runs @ {r['rate']:g} tok/s on replica A: watcher on B vs on A, p50 / p99 (ms)",
            f"B: {_f(r['remote_p50_ms'])} / {_f(r['remote_p99_ms'])}",
            f"A: {_f(r['owner_p50_ms'])} / {_f(r['owner_p99_ms'])}",
            f"+{_f(r['remote_minus_owner_p50_ms'])} ms",
            _goal(_ok(r["remote_minus_owner_p50_ms"], lambda v: v <= 10), "p50 within 10 ms"),
        )
    ]


def _takeover(r: dict[str, Any]) -> list[Row]:
    return [
        (
            f"13. takeover after SIGKILL of the owner, lease {r['lease_s']:g} s, {r['kills']} kills: p50 / worst (s)",
            f"{_f(r['p50_s'], digits=2)} / {_f(r['worst_s'], digits=2)}",
            "",
            "",
            "",
        )
    ]


def table(results: dict[str, Any]) -> str:
    """A Markdown table of every result present."""
    res = results["results"]
    rows: list[Row] = []
    if "throughput" in res:
        rows += _throughput(res["throughput"])
    for r in res.get("load", []):
        rows += _load(r)
    rows += _lifecycle(res)
    if "sqlite" in res:
        rows += _sqlite(res["sqlite"])
    for r in res.get("replicas", []):
        rows += _replicas(r)
    if "cross_watch" in res:
        rows += _cross(res["cross_watch"])
    if "takeover" in res:
        rows += _takeover(res["takeover"])
    head = ("measurement (medians)", "server", "bare gRPC", "ratio", "goal")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    m = results["machine"]
    lines.append("")
    lines.append(f"{results['date']}, {m['cores']} cores ({m['cpu']}), Python {m['python']}, grpcio {m['grpcio']}")
    lines.append(f"`{results['command']}`, {results.get('elapsed_s', '?')} s")
    return "\n".join(lines)
