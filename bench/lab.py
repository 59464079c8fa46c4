"""The processes of one harness run: the fake provider, the bare baseline, and the server under test.

Three processes besides the load client (this one): the server alone in its process (`facilitair serve` as an
operator starts it, bench/cluster.py), so that its CPU and RSS are its own; the fake provider in another, so
that making tokens costs the server nothing; and the baseline in a third, started once and idle while the
server is measured (and the other way round). The load client and the fake share the second core with each
other and with the server's SQLite and gRPC threads: on 2 cores, nothing is free, so every result is also
given as a ratio to the baseline measured the same way.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import profile
from bench.cluster import Served, environment, start
from bench.procs import Child, spawn


@dataclass
class Lab:
    """The running fake and baseline, and a way to start a fresh server (new SQLite file) per scenario."""

    fake: Child
    baseline: Child
    workdir: Path
    # With a folder, every server is sampled by py-spy for its whole life, into a file there.
    profile_dir: Path | None = None
    profiles: dict[str, dict[str, object]] = field(default_factory=dict)
    # Proposed patches the server processes apply (bench/patches.py); none by default.
    tries: tuple[str, ...] = ()
    _servers: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def openai_url(self) -> str:
        """The fake's base URL for the SDK."""
        return f"http://{self.fake.target}/v1"

    @contextlib.asynccontextmanager
    async def server(self, label: str, **settings: str) -> AsyncIterator[Served]:
        """A fresh `facilitair serve` on a new SQLite file, stopped on exit; `label` names its profile, `settings`
        are more FACILITAIR_* variables."""
        n = next(self._servers)
        db = self.workdir / f"bench-{n}.sqlite3"
        env = environment(self.openai_url, f"{label}-{n}", {"FACILITAIR_DB": str(db)}, **settings)
        child = await start(env, self.workdir, tries=self.tries)
        sampler = None
        if self.profile_dir is not None:
            path = self.profile_dir / f"profile-{label}-{n}.txt"
            sampler = await profile.record(child.pid, path)
        try:
            yield child
        finally:
            if sampler is not None:
                await profile.finish(sampler)
                self.profiles[f"{label}-{n}"] = {"file": path.name, **profile.summarise(path)}
            await child.stop()


@contextlib.asynccontextmanager
async def open_lab(
    workdir: Path | None = None, profile_dir: Path | None = None, tries: tuple[str, ...] = ()
) -> AsyncIterator[Lab]:
    """Start the fake and the baseline; the databases go in `workdir` (a temporary folder by default)."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            # The system temp folder: on the machines measured it is on the disk (not tmpfs), as a real database is.
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="facilitair-bench-")))
        fake = await spawn("fake", "bench.fake")
        try:
            baseline = await spawn("baseline", "bench.baseline")
            try:
                yield Lab(fake, baseline, workdir, profile_dir, tries=tries)
            finally:
                await baseline.stop()
        finally:
            await fake.stop()
