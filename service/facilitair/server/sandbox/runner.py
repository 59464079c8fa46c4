"""Run a run's tests in the sandbox: a work directory of copies, one bounded process, a TestReport.

The sandbox is probed once at start (a real pytest run on an empty work directory, so a host where user
namespaces are refused is found then, not mid-run). Work directories live under one root per host uid,
named after the server's pid: every run removes its own on every path, and a server starting removes those
of servers that are gone (a crash leaves them behind). At most `concurrency` test runs at once per server:
tests share the machine with the models and the server itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import os
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import structlog

from facilitair.server.domain import TestFailure, TestReport
from facilitair.server.sandbox import command, junit, pyenv
from facilitair.server.sandbox.command import Limits

log = structlog.get_logger(__name__)

PROBE_SECONDS = 30.0
# A line streamed as an event is cut here; the whole output is bounded by Limits.output_bytes.
MAX_LINE = 1000
KILL_WAIT = 5.0  # after SIGKILL the process is gone at once; this only bounds a kernel that is slow to reap


class SandboxKind(enum.StrEnum):
    """`--sandbox`: how the Tester's tests run."""

    BWRAP = "bwrap"  # in bubblewrap (the default)
    OFF = "off"  # never run tests
    UNSANDBOXED = "unsandboxed"  # run them with the server's rights: only an operator's explicit, logged choice


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether tests can run here, and what runs them or why not."""

    usable: bool
    detail: str


def default_root() -> Path:
    """The root of the pytest environment and the work directories: the temp directory, one per host uid.

    Not under the server's data directory: a server running as root starts the sandbox as `nobody`, who
    must be able to reach these directories, and a data directory in a home directory is often closed.
    """
    return Path(tempfile.gettempdir()) / f"facilitair-sandbox-{os.geteuid()}"


class Sandbox:
    """Runs pytest on a set of files, in the configured sandbox, within the limits."""

    def __init__(
        self, kind: SandboxKind, *, root: Path | None = None, limits: Limits | None = None, concurrency: int = 1
    ) -> None:
        self.kind = kind
        self.limits = limits or Limits()
        self._root = root or default_root()
        self._slots = asyncio.Semaphore(concurrency)
        self._env: Path | None = None
        self._bwrap = shutil.which("bwrap") or ""
        self.availability = Availability(False, "tests are not run (--sandbox off)")
        self.probe_seconds = 0.0  # the probe's own time: the sandbox's overhead on a run with no tests

    @property
    def enabled(self) -> bool:
        """Whether the server was asked to run tests at all (the pipeline then has its Test run step)."""
        return self.kind != SandboxKind.OFF

    async def start(self) -> Availability:
        """Sweep work directories left by servers that are gone, make the pytest environment, probe."""
        if not self.enabled:
            return self.availability
        if self.kind == SandboxKind.UNSANDBOXED:
            log.warning(
                "tests_run_unsandboxed",
                detail="--sandbox unsandboxed: generated code runs with this server's rights, files and network",
            )
        elif not self._bwrap:
            self.availability = Availability(False, "bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
            log.warning("sandbox_unavailable", detail=self.availability.detail)
            return self.availability
        try:
            await asyncio.to_thread(self._prepare)
        except OSError as exc:
            self.availability = Availability(False, f"the test environment cannot be made: {exc.strerror or exc}")
            log.warning("sandbox_unavailable", detail=self.availability.detail)
            return self.availability
        started = time.monotonic()
        self.availability = Availability(True, self.kind.value)  # the probe runs through run() like any test run
        said: list[str] = []
        try:
            report = await self.run({}, said.append)
        except OSError as exc:  # bubblewrap or the interpreter cannot even be started
            report = TestReport(executed=False, not_run_reason=str(exc))
        self.probe_seconds = time.monotonic() - started
        if report.not_run_reason or report.stopped or report.timed_out or report.errors:
            last = f" ({said[-1][:200]})" if said else ""
            self.availability = Availability(False, f"the sandbox does not work here: {_why(report)}{last}")
            log.warning("sandbox_unavailable", detail=self.availability.detail)
        else:
            self.availability = Availability(True, self._describe())
            log.info("sandbox_ready", sandbox=self.availability.detail, probe_seconds=round(self.probe_seconds, 3))
        return self.availability

    def _describe(self) -> str:
        if self.kind == SandboxKind.BWRAP:
            return f"bwrap ({self._bwrap})"
        return "unsandboxed"

    def _prepare(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        # In a shared temp directory the name may have been taken first: only a real directory of our own will do
        # (a link planted there would have a root server change modes and write where it points).
        found = self._root.lstat()
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid():
            raise OSError(errno.EPERM, f"{self._root} is not a directory of this server's user")
        self._root.chmod(0o711)  # the sandbox's uid passes through to its own work directory, and lists nothing
        work = self._root / "work"
        work.mkdir(exist_ok=True)
        work.chmod(0o711)
        for entry in work.iterdir():
            pid = entry.name.partition("-")[0]
            if not pid.isdigit() or int(pid) == os.getpid() or not _alive(int(pid)):
                _remove(entry)
        for entry in self._root.glob(".building-*"):  # an environment a crashed server was making
            pid = entry.name.removeprefix(".building-")
            if pid.isdigit() and not _alive(int(pid)):
                _remove(entry)
        self._env = pyenv.ensure(self._root)

    async def run(self, files: Mapping[str, str], on_line: Callable[[str], None]) -> TestReport:
        """Run pytest on `files` (relative path: content), streaming output lines to `on_line`."""
        if not self.availability.usable or self._env is None:
            return TestReport(executed=False, not_run_reason=self.availability.detail)
        async with self._slots:
            work = self._root / "work" / f"{os.getpid()}-{secrets.token_hex(8)}"
            try:
                await asyncio.to_thread(self._fill, work, files)
                return await self._execute(work, on_line)
            finally:
                await asyncio.shield(asyncio.to_thread(_remove, work))

    def _fill(self, work: Path, files: Mapping[str, str]) -> None:
        work.mkdir(mode=0o700)
        for name, content in files.items():
            relative = PurePosixPath(name)
            if relative.is_absolute() or ".." in relative.parts:
                continue  # parsing.py never lets such a path through; never write outside the work directory
            path = work.joinpath(*relative.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
        if _drops_to_nobody(self.kind):
            for path in [work, *work.rglob("*")]:
                os.chown(path, command.NOBODY, command.NOBODY, follow_symlinks=False)

    def command_for(self, work: Path) -> list[str]:
        """The command line a test run in `work` runs (for the benchmark)."""
        return self._command(work)[0]

    def _command(self, work: Path) -> tuple[list[str], dict[str, str], Path]:
        assert self._env is not None
        python, prefix = pyenv.interpreter(other_uid=_drops_to_nobody(self.kind))
        if self.kind == SandboxKind.BWRAP:
            args = command.bwrap_command(
                self._bwrap, python, prefix=prefix, env_dir=self._env, work=work, limits=self.limits
            )
            if _drops_to_nobody(self.kind):
                args = command.as_nobody(python, args)
            # bubblewrap itself starts with an empty environment too: its own is what /proc/1/environ shows.
            return args, {"PATH": "/usr/bin:/bin"}, work
        args = command.pytest_command(python, str(work), self.limits)
        return args, command.environment(str(self._env), str(work)), work

    async def _execute(self, work: Path, on_line: Callable[[str], None]) -> TestReport:
        args, env, cwd = self._command(work)
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        output = _Output(self.limits, on_line)
        timed_out = False
        try:
            assert process.stdout is not None
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + self.limits.wall_seconds):
                await output.drain(process.stdout)
                code = await process.wait()
        except TimeoutError:
            timed_out = True
            code = await _kill(process)
        except BaseException:
            await asyncio.shield(_kill(process))
            raise
        seconds = time.monotonic() - started
        log.info("tests_ended", exit_code=code, seconds=round(seconds, 3), timed_out=timed_out)
        return _report(work, code, seconds, timed_out=timed_out, truncated=output.truncated, limits=self.limits)


class _Output:
    """Reads the tests' output: lines to `on_line` up to the line cap, bytes kept up to the byte cap."""

    def __init__(self, limits: Limits, on_line: Callable[[str], None]) -> None:
        self._limits = limits
        self._on_line = on_line
        self._lines = 0
        self._bytes = 0
        self._partial = b""
        self.truncated = False

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            if self._bytes >= self._limits.output_bytes:
                self.truncated = True  # read on, so the tests never block on a full pipe, but keep nothing
                continue
            chunk = chunk[: self._limits.output_bytes - self._bytes]
            self._bytes += len(chunk)
            self._partial += chunk
            *lines, self._partial = self._partial.split(b"\n")
            for line in lines:
                self._emit(line)
            if len(self._partial) > MAX_LINE:
                self._emit(self._partial)
                self._partial = b""
        if self._partial:
            self._emit(self._partial)

    def _emit(self, line: bytes) -> None:
        if self._lines >= self._limits.output_lines:
            self.truncated = True
            return
        self._lines += 1
        text = line[:MAX_LINE].decode("utf-8", "replace").rstrip("\r")
        self._on_line(text.replace("\x00", "\ufffd"))  # a NUL is no text a store keeps


async def _kill(process: asyncio.subprocess.Process) -> int:
    """Kill the sandbox: bubblewrap, its process group, and (--die-with-parent, its pid namespace) all inside."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    try:
        return await asyncio.wait_for(process.wait(), KILL_WAIT)
    except TimeoutError:
        return -int(signal.SIGKILL)


def _stopped(code: int, limits: Limits) -> str:
    """Which limit stopped the tests, from how the process ended (bubblewrap passes its child's status on)."""
    signals = {
        int(signal.SIGXCPU): f"the CPU time limit of {limits.cpu_seconds} s",
        int(signal.SIGKILL): "a kill (the CPU time or memory limit)",
        int(signal.SIGXFSZ): f"the file size limit of {limits.file_bytes} bytes",
        int(signal.SIGSEGV): "a crash (SIGSEGV), often the memory limit",
    }
    number = -code if code < 0 else code - 128 if code > 128 else 0
    return signals.get(number, f"signal {number}" if number else "")


def _report(work: Path, code: int, seconds: float, *, timed_out: bool, truncated: bool, limits: Limits) -> TestReport:
    counts = junit.read(work / command.REPORT_NAME)
    stopped = "" if timed_out else _stopped(code, limits)
    if counts is None:
        # No report: pytest did not finish (stopped by a limit, the wall clock) or could not start.
        why = (
            f"the wall-clock limit of {limits.wall_seconds:g} s"
            if timed_out
            else stopped or f"pytest exited with status {code} and wrote no report"
        )
        failure = TestFailure("(test run)", f"the tests were stopped by {why}" if timed_out or stopped else why, "")
        return TestReport(
            executed=True,
            errors=1,
            seconds=seconds,
            failures=(failure,),
            timed_out=timed_out,
            truncated=truncated,
            stopped=stopped or ("" if timed_out else failure.message),
        )
    return TestReport(
        executed=True,
        passed=counts.passed,
        failed=counts.failed,
        errors=counts.errors,
        skipped=counts.skipped,
        seconds=seconds,
        failures=tuple(counts.failures),
        timed_out=timed_out,
        truncated=truncated,
        stopped=stopped,
    )


def _why(report: TestReport) -> str:
    if report.not_run_reason:
        return report.not_run_reason
    return report.failures[0].message if report.failures else "the probe failed"


def _drops_to_nobody(kind: SandboxKind) -> bool:
    """A server running as root starts bubblewrap as `nobody`: the process limit binds no root-owned process."""
    return kind == SandboxKind.BWRAP and os.geteuid() == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    """Remove a work directory whatever the tests did to its modes."""

    def retry(function: Callable[[str], object], name: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
            function(name)

    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    elif sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)
