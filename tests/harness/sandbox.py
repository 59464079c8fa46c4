"""The real sandbox for the tests: bubblewrap must be there (scripts/test installs it), else they fail loudly.

A missing bwrap is not a reason to skip: the sandbox is a core feature, and a machine without it would
pass its tests having run none of them. scripts/test installs it on Debian as root; elsewhere install
`bubblewrap` first.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from facilitair.server.sandbox import Limits, Sandbox, SandboxKind

# Small limits, so the hostile tests end in seconds; the wall clock is a hang guard above the CPU limit.
TEST_LIMITS = Limits(wall_seconds=20.0, cpu_seconds=2, memory_bytes=512 * 1024 * 1024, output_lines=50)


def sandbox_root_for_test() -> Iterator[Path]:
    """A sandbox root of the test's own in the temp directory (pytest's tmp_path is closed to `nobody`)."""
    root = Path(tempfile.gettempdir()) / f"facilitair-sandbox-test-{secrets.token_hex(6)}"
    yield root
    if root.is_symlink():
        root.unlink()
    shutil.rmtree(root, ignore_errors=True)


def require_bwrap() -> str:
    """The path of bwrap; fails the test (never skips it) when it is missing."""
    found = shutil.which("bwrap")
    if found is None:
        pytest.fail("bubblewrap is not installed: scripts/test installs it (apt-get install bubblewrap)")
    return found


async def started(root: Path, limits: Limits = TEST_LIMITS) -> Sandbox:
    """A bubblewrap sandbox rooted at `root`, started and found usable."""
    require_bwrap()
    sandbox = Sandbox(SandboxKind.BWRAP, root=root, limits=limits)
    availability = await sandbox.start()
    assert availability.usable, availability.detail
    return sandbox
