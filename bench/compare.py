"""Each figure of a bench invocation against the one last recorded in the repository (bench/recorded.json).

A regression is said by the bench itself, not by a timed test: after every invocation each figure is compared
with the recorded one and flagged REGRESSED when it is worse by more than its noise margin (`MARGINS`), and
`--check` turns any such flag into a non-zero exit. The recorded file has the shape of a results file (the
scenarios' results, medians only) plus when, where and on which commit each scenario was measured, so that
`figures` reads both the same way; `--record` writes the current results there for a developer to commit.

On a shared 2-core machine absolute figures move 2-3x between invocations, so where a figure has a ratio to
the bare gRPC stream measured in the same invocation, the ratio is what is flagged and the absolute figure is
shown for information only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORDED = Path(__file__).parent / "recorded.json"

# Which way is better, and how much worse than recorded is still noise: worse by more than
# max(relative * |recorded|, absolute) is a regression. Margins come from the spread between the passes and
# invocations docs/benchmarks.md reports (p99 varies 2-3x between passes; CPU ratios within about 10%).
HIGHER, LOWER, INFO = "higher", "lower", "info"


@dataclass(frozen=True)
class Margin:
    """How a metric is judged: its better direction (INFO: shown, never flagged) and its noise margin."""

    better: str
    relative: float = 0.0
    absolute: float = 0.0


MARGINS: dict[str, Margin] = {
    # Ratios to the same invocation's bare stream: the robust ones.
    "tokens_per_s_ratio": Margin(HIGHER, relative=0.15),
    "coalesced_ratio": Margin(HIGHER, relative=0.15),
    "p50_ratio": Margin(LOWER, relative=1.0),  # 2x the recorded ratio
    "p99_ratio": Margin(LOWER, relative=2.0),  # 3x: p99 alone varies 2-3x between passes
    "cpu_ratio": Margin(LOWER, relative=0.15),
    "first_event_p50_ratio": Margin(LOWER, relative=0.5),
    "replay_ratio": Margin(LOWER, relative=0.25),
    "replay_coalesced_ratio": Margin(LOWER, relative=0.5, absolute=0.01),
    "sse_cpu_ratio": Margin(LOWER, relative=0.25),
    # Of what was offered: every token, or a fixed share of them when the machine cannot relay them all.
    "delivered_fraction": Margin(HIGHER, absolute=0.03),
    "tokens_missing": Margin(LOWER, relative=0.25),
    # Memory has no bare counterpart; it moves little between passes.
    "rss_per_run_kib": Margin(LOWER, relative=0.3),
    "kib_per_watcher": Margin(LOWER, relative=0.15),
    # The store alone, no bare counterpart: disk-bound, so a generous margin.
    "events_per_s": Margin(HIGHER, relative=0.3),
    "remote_minus_owner_p50_ms": Margin(LOWER, absolute=5.0),
    # Set by the lease (renewed every lease/3): a fixed range, whatever the machine.
    "takeover_p50_s": Margin(LOWER, absolute=1.5),
    "takeover_worst_s": Margin(LOWER, absolute=2.0),
    # Shown for information: their ratio above is what is judged.
    "tokens_per_s": Margin(INFO),
    "p50_ms": Margin(INFO),
    "p99_ms": Margin(INFO),
    "delivered_tokens_per_s": Margin(INFO),
    "cpu_us_per_token": Margin(INFO),
    "first_event_p50_ms": Margin(INFO),
    "replay_ms": Margin(INFO),
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _div(a: Any, b: Any) -> float | None:
    x, y = _number(a), _number(b)
    return x / y if x is not None and y else None


def _shape(r: dict[str, Any]) -> str:
    return f"{r['runs']}x{r['rate']:g}"


def _relay(server: dict[str, Any], bare: dict[str, Any], offered: float) -> dict[str, float | None]:
    """The figures of one relay configuration under load, with their ratios to the bare stream's."""
    return {
        "p50_ms": server.get("p50_ms"),
        "p99_ms": server.get("p99_ms"),
        "p50_ratio": _div(server.get("p50_ms"), bare.get("p50_ms")),
        "p99_ratio": _div(server.get("p99_ms"), bare.get("p99_ms")),
        "delivered_tokens_per_s": server.get("delivered_tokens_per_s"),
        "delivered_fraction": _div(server.get("delivered_tokens_per_s"), offered),
        "tokens_missing": server.get("tokens_missing"),
        "cpu_us_per_token": server.get("cpu_us_per_token"),
        "cpu_ratio": _div(server.get("cpu_us_per_token"), bare.get("cpu_us_per_token")),
        "rss_per_run_kib": server.get("rss_per_run_kib"),
    }


def figures(results: dict[str, Any]) -> dict[str, float]:
    """Every judged figure of a results dict, by a name that says its scenario and size, and its metric after
    the last ': '. Sizes are in the names, so a --quick invocation is never compared with a full one."""
    out: dict[str, float | None] = {}
    if "throughput" in results:
        t = results["throughput"]
        name = f"throughput, {t['tokens']} tokens"
        out[f"{name}: tokens_per_s"] = t.get("tokens_per_s", {}).get("server")
        out[f"{name}: tokens_per_s_ratio"] = t.get("ratio_server")
        out[f"{name}: coalesced_ratio"] = t.get("ratio_coalesced")
    for r in results.get("load", []):
        relay = _relay(r.get("server", {}), r.get("baseline", {}), r["runs"] * r["rate"])
        out |= {f"load {_shape(r)}: {k}": v for k, v in relay.items()}
    if "watchers" in results:
        w = results["watchers"]
        out[f"idle watchers, {w['watchers']}: kib_per_watcher"] = w.get("kib_per_watcher")
    if "first_event" in results:
        f = results["first_event"]
        name = f"first event, {f['calls']} calls one at a time"
        out[f"{name}: first_event_p50_ms"] = f.get("server_p50_ms")
        out[f"{name}: first_event_p50_ratio"] = f.get("ratio_p50")
    if "sse_watchers" in results:
        w = results["sse_watchers"]
        out[f"idle SSE watchers, {w['watchers']}: kib_per_watcher"] = w.get("kib_per_watcher")
    if "sse_cpu" in results:
        c = results["sse_cpu"]
        out[f"SSE watcher of {c['events']} events: sse_cpu_ratio"] = c.get("ratio")
    if "sse_live_cpu" in results:
        c = results["sse_live_cpu"]
        out[f"{c['watchers']} SSE watchers of a live {c['events']}-event run: sse_cpu_ratio"] = c.get("ratio")
    if "replay" in results:
        r = results["replay"]
        name = f"replay of {r['events']} events"
        out[f"{name}: replay_ms"] = r.get("ms", {}).get("server")
        out[f"{name}: replay_ratio"] = r.get("ratio_server")
        out[f"{name}: replay_coalesced_ratio"] = r.get("ratio_coalesced")
    if "sqlite" in results:
        q = results["sqlite"]
        name = f"sqlite, {q['event_log']['events']} events"
        for b in q.get("fixed_batches", []):
            out[f"{name}, {b['batch']} per commit: events_per_s"] = b.get("events_per_s")
        out[f"{name}, EventLog: events_per_s"] = q["event_log"].get("events_per_s")
    for r in results.get("replicas", []):
        configs = r.get("configs", {})
        bare, offered = configs.get("baseline", {}), r["runs"] * r["rate"]
        for key, c in configs.items():
            if key != "baseline":
                out |= {f"replicas {_shape(r)} {key}: {k}": v for k, v in _relay(c, bare, offered).items()}
    if "cross_watch" in results:
        c = results["cross_watch"]
        out[f"cross-watch {_shape(c)}: remote_minus_owner_p50_ms"] = c.get("remote_minus_owner_p50_ms")
    if "takeover" in results:
        k = results["takeover"]
        name = f"takeover, lease {k['lease_s']:g} s"
        out[f"{name}: takeover_p50_s"] = k.get("p50_s")
        out[f"{name}: takeover_worst_s"] = k.get("worst_s")
    return {name: v for name, value in out.items() if (v := _number(value)) is not None}


@dataclass(frozen=True)
class Compared:
    """One figure against its recorded value; `verdict` is REGRESSED, better, same, or info."""

    name: str
    recorded: float
    now: float
    verdict: str
    margin: str


def _margin_text(m: Margin) -> str:
    parts = [f"{m.relative:.0%}"] if m.relative else []
    parts += [f"{m.absolute:g}"] if m.absolute else []
    return " or ".join(parts) if m.better != INFO else "-"


def judge(name: str, recorded: float, now: float) -> Compared:
    """Compare one figure: REGRESSED when worse than recorded beyond its metric's margin."""
    m = MARGINS[name.rpartition(": ")[2]]
    if m.better == INFO:
        return Compared(name, recorded, now, "info", "-")
    worse_by = now - recorded if m.better == LOWER else recorded - now
    allowed = max(m.relative * abs(recorded), m.absolute)
    # Better is the mirror image: a ratio 3x higher is noise, and so is one 3x lower (not 1 - 200% of it).
    mirrored = m.relative / (1 + m.relative) if m.better == LOWER else m.relative
    if worse_by > allowed:
        verdict = "REGRESSED"
    elif -worse_by > max(mirrored * abs(recorded), m.absolute):
        verdict = "better"
    else:
        verdict = "same"
    return Compared(name, recorded, now, verdict, _margin_text(m))


def compare(recorded: dict[str, float], now: dict[str, float]) -> list[Compared]:
    """Every figure present in both, in the order of `now`."""
    return [judge(name, recorded[name], value) for name, value in now.items() if name in recorded]


def regressed(rows: list[Compared]) -> list[Compared]:
    """The rows flagged REGRESSED."""
    return [r for r in rows if r.verdict == "REGRESSED"]


def _f(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def comparison_table(rows: list[Compared], recorded_from: str) -> str:
    """The comparison as a Markdown table, and one closing line that says whether anything regressed."""
    if not rows:
        return f"No figure of this invocation has a recorded counterpart in {recorded_from} (other sizes?)."
    lines = [
        f"Against {recorded_from}:",
        "",
        "| figure: metric | recorded | now | worse-by margin | verdict |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.name} | {_f(r.recorded)} | {_f(r.now)} | {r.margin} | {r.verdict} |" for r in rows]
    bad = regressed(rows)
    lines.append("")
    if bad:
        names = "; ".join(r.name for r in bad)
        lines.append(f"REGRESSED: {len(bad)} figure(s) worse than recorded beyond their margin: {names}")
    else:
        lines.append("No figure is worse than recorded beyond its margin.")
    return "\n".join(lines)


# What a recorded result keeps: its medians, not every pass and sample behind them.
_NOT_RECORDED = frozenset({"passes", "samples", "samples_s", "samples_ms", "samples_us", "cpu_s", "processes"})


def _medians(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _medians(v) for k, v in value.items() if k not in _NOT_RECORDED}
    if isinstance(value, list):
        return [_medians(v) for v in value]
    return value


def _keyed(scenario: str, result: Any) -> dict[str, Any]:
    """A scenario's results by the name the record keeps them under: one per shape for the load scenarios."""
    if isinstance(result, list):
        return {f"{scenario} {_shape(r)}": r for r in result}
    return {scenario: result}


def read_recorded(path: Path = RECORDED) -> dict[str, Any]:
    """The recorded file; an empty record when there is none yet."""
    if not path.exists():
        return {"measured": {}, "results": {}}
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def record(recorded: dict[str, Any], out: dict[str, Any], commit: str) -> dict[str, Any]:
    """The record with every scenario (and load shape) of `out` measured anew, the others kept as they were."""
    measured = dict(recorded.get("measured", {}))
    results = {k: v for k, v in recorded.get("results", {}).items()}
    when = {"date": out["date"], "commit": commit, "command": out["command"], "machine": out["machine"]}
    for scenario, result in _medians(out["results"]).items():
        if isinstance(result, list):
            by_shape = {_shape(r): r for r in results.get(scenario, [])} | {_shape(r): r for r in result}
            results[scenario] = list(by_shape.values())
        else:
            results[scenario] = result
        measured |= dict.fromkeys(_keyed(scenario, result), when)
    return {"about": recorded.get("about", ""), "measured": measured, "results": results}
