"""The benchmark harness works: one tiny run of `python -m bench --quick`, and its pure parts.

Benchmarks are not tests: nothing here asserts a timing, only that every result is produced.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import patches
from bench.fake import MIN_SIZE, Directive, stamped
from bench.profile import summarise
from bench.report import table
from bench.stats import median, percentile, ratio

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_produces_every_result(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    assert {"date", "command", "machine", "params", "results", "elapsed_s"} <= set(data)
    res = data["results"]
    assert set(res) == {"throughput", "load", "watchers", "first_event", "replay", "sqlite"}
    assert set(res["throughput"]["tokens_per_s"]) == {"server", "server_coalesced", "baseline"}
    assert {"ratio_server", "ratio_coalesced", "tokens_per_coalesced_message"} <= set(res["throughput"])
    [load] = res["load"]
    assert {"p50_ms", "p99_ms", "cpu_percent", "rss_per_run_kib", "failed_runs"} <= set(load["server"])
    assert {"p50_ms", "p99_ms", "cpu_percent"} <= set(load["baseline"])
    assert load["server"]["failed_runs"] == 0
    assert "kib_per_watcher" in res["watchers"]
    assert {"server_p50_ms", "server_p99_ms", "baseline_p50_ms"} <= set(res["first_event"])
    assert set(res["replay"]["ms"]) == {"server", "server_coalesced", "baseline"}
    assert len(res["sqlite"]["fixed_batches"]) == 4
    assert "events_per_commit" in res["sqlite"]["event_log"]
    assert "| measurement (medians) |" in proc.stdout


def test_directive_survives_the_prompt() -> None:
    directive = Directive(tokens={"coder": 500, "tester": 3}, default_tokens=2, rate=25.0, size=32, hold=-1.0)
    prompt = f"# Task\n{directive.task()}\n\n# Design\n..."
    assert Directive.parse(prompt) == directive
    assert Directive.parse("no directive here") == Directive()
    assert directive.count("coder") == 500
    assert directive.count("architect") == 2


def test_stamped_token_has_the_size_and_starts_with_the_clock() -> None:
    token = stamped(MIN_SIZE + 5)
    assert len(token) == MIN_SIZE + 5
    assert token[:19].isdigit()


def test_statistics() -> None:
    assert percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile(list(range(1, 101)), 99) == 99
    assert math.isnan(percentile([], 50))
    assert median([1, 2, 3, 4]) == 2.5
    assert math.isnan(ratio(1.0, 0.0))


def test_profile_summary(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "thread (1): MainThread;main (service/facilitair/server/servicer.py:1);encode (json/encoder.py:2) 3\n"
        "thread (1): MainThread;main (service/facilitair/server/servicer.py:1) 1\n",
        encoding="utf-8",
    )
    summary = summarise(raw)
    assert summary["samples"] == 4
    assert dict(summary["by_library_percent"]) == {"json": 75.0, "facilitair": 25.0}
    assert summary["top_inclusive_percent"][0] == ("main (servicer.py)", 100.0)


def test_table_shows_missing_values_as_dashes() -> None:
    results = {
        "date": "2026-01-01T00:00:00+00:00",
        "command": "python -m bench",
        "machine": {"cores": 2, "cpu": "x", "python": "3.11", "grpcio": "1"},
        "results": {
            "replay": {
                "events": 10,
                "ms": {"server": 1.0, "server_coalesced": math.nan, "baseline": 2.0},
                "ratio_server": 0.5,
                "ratio_coalesced": math.nan,
            }
        },
    }
    text = table(results)
    assert "| 4. replay of a finished 10-event run (ms) | 1.0 | 2.0 | 0.50x | <= 200 ms: met |" in text
    assert "| - |" in text


def test_patches_name_the_alternatives_of_what_was_adopted() -> None:
    assert patches.apply([]) == "auto"
    assert patches.apply(["asyncio"]) == "asyncio"
    with pytest.raises(ValueError, match="unknown patch 'uvloop'; known: httpx, asyncio"):
        patches.apply(["uvloop"])  # adopted: the default now, no longer a patch
