"""The command line that runs pytest in a work directory: under bubblewrap, or (an operator's explicit choice) bare.

Inside bubblewrap every namespace is unshared (the network has only a loopback of its own), the root is a
fresh tmpfs with the system directories bound read-only, the pytest environment (pyenv.py) read-only at
/opt/pytest and the work directory writable at /work; the environment is empty but for a few fixed
variables; the uid is unprivileged; the sandbox dies with its parent. The limits are rlimits set by a
few lines of Python run first inside the sandbox (after the user namespace exists, so they count the
sandbox's own processes), which then exec pytest; the process-count limit is only enforced for a non-root
host uid, which is why a server running as root starts bubblewrap as `nobody`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The uid and gid of `nobody` on Debian and most Linux: what a server running as root drops to.
NOBODY = 65534
INSIDE_WORK = "/work"
INSIDE_ENV = "/opt/pytest"
REPORT_NAME = ".facilitair-junit.xml"
# Directories of the host's system, bound read-only when they exist (symlinks, as on merged-/usr systems, are
# made as the same symlinks).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one test run may use."""

    wall_seconds: float = 60.0
    cpu_seconds: int = 30
    memory_bytes: int = 1024 * 1024 * 1024
    file_bytes: int = 16 * 1024 * 1024
    open_files: int = 256
    processes: int = 64
    output_bytes: int = 256 * 1024  # output kept for the report; the rest is read and dropped
    output_lines: int = 200  # output lines streamed as events


# Run first in the sandbox: set the limits (soft and hard, so they cannot be raised), then run pytest in the
# same process (no second interpreter start: that is most of a test run's overhead).
BOOT = """
import resource, sys
cpu, mem, fsize, nofile, nproc = (int(a) for a in sys.argv[1:6])
for limit, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (mem, mem)),
                     (resource.RLIMIT_FSIZE, (fsize, fsize)), (resource.RLIMIT_NOFILE, (nofile, nofile)),
                     (resource.RLIMIT_NPROC, (nproc, nproc)), (resource.RLIMIT_CORE, (0, 0))):
    resource.setrlimit(limit, value)
args = sys.argv[6:]
sys.argv = ["pytest", *args]
import pytest
raise SystemExit(int(pytest.main(args)))
"""


# Drops a root server's rights to `nobody`, then becomes bubblewrap. A process of its own, not Popen's `user=`:
# that makes Python fork() instead of vfork(), and a fork() of the server runs gRPC's fork handlers in the
# child, which crashed it (SIGSEGV) while other threads were in gRPC.
AS_NOBODY = f"""
import os, sys
os.setgroups([])
os.setgid({NOBODY})
os.setuid({NOBODY})
os.execv(sys.argv[1], sys.argv[1:])
"""


def as_nobody(python: Path, args: list[str]) -> list[str]:
    """`args` run as nobody (for a server running as root)."""
    return [str(python), "-S", "-I", "-c", AS_NOBODY, *args]


def pytest_command(python: Path, work: str, limits: Limits) -> list[str]:
    """The interpreter, the boot script with the limits, then pytest's arguments."""
    return [
        str(python),
        "-S",
        "-c",
        BOOT,
        str(limits.cpu_seconds),
        str(limits.memory_bytes),
        str(limits.file_bytes),
        str(limits.open_files),
        str(limits.processes),
        "-q",
        "-p",
        "no:cacheprovider",
        "--color=no",
        # What a test prints reaches the output as it runs (streamed as events), and the report as well.
        "--capture=tee-sys",
        f"--rootdir={work}",
        f"--junitxml={work}/{REPORT_NAME}",
        "-o",
        "junit_family=xunit1",  # the family whose test cases name their file
    ]


def environment(env_dir: str, work: str) -> dict[str, str]:
    """The whole environment of the tests: fixed values, nothing of the server's."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": work,
        "LANG": "C.UTF-8",
        "PYTHONPATH": f"{env_dir}:{work}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",  # output streams as the tests write it, not at their end
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }


def _system_binds() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in SYSTEM_FILES:
        args += ["--ro-bind-try", path, path]
    return args


def bwrap_command(bwrap: str, python: Path, *, prefix: Path, env_dir: Path, work: Path, limits: Limits) -> list[str]:
    """bubblewrap's command line for one test run in `work`."""
    args = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"]
    args += ["--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "sandbox"]
    args += _system_binds()
    if not any(prefix.is_relative_to(d) for d in SYSTEM_DIRS):
        args += ["--ro-bind", str(prefix), str(prefix)]  # an interpreter installed elsewhere (/opt, /usr/local)
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]  # noqa: S108 - the sandbox's own, empty /tmp
    args += ["--ro-bind", str(env_dir), INSIDE_ENV, "--bind", str(work), INSIDE_WORK, "--chdir", INSIDE_WORK]
    args += ["--remount-ro", "/", "--clearenv"]  # the fresh root itself is read-only too
    for name, value in environment(INSIDE_ENV, INSIDE_WORK).items():
        args += ["--setenv", name, value]
    return [*args, "--", *pytest_command(python, INSIDE_WORK, limits)]
