"""The interpreter environment tests run with: pytest and what it needs, and nothing of the server.

The system's Python (the one the server's own environment was made from) runs with `-S` (no site directory,
so none of the host's installed packages) and `PYTHONPATH` set to this directory alone. The directory holds
copies of the installed distributions of pytest and its requirements, taken from the server's environment
(the lock pins them), so building it needs no network. It is made once per pytest version, in a fresh
directory renamed into place, so a server killed while building leaves no half-made environment in use.
"""

from __future__ import annotations

import compileall
import os
import shutil
import stat
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT_DISTRIBUTION = "pytest"


SYSTEM_PYTHON = Path("/usr/bin/python3")


def _reachable(path: Path) -> bool:
    """Whether any user may reach `path`: every directory above it lets others through."""
    return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in path.parents)


def interpreter(*, other_uid: bool) -> tuple[Path, Path]:
    """The interpreter tests run with and its prefix (where its standard library is, mounted read-only).

    The one the server's environment was made from (a venv's python is a link to it); when the sandbox runs
    as another uid (a server running as root) and that one lies in a closed directory (pyenv under /root),
    the system's python3 instead.
    """
    executable, prefix = Path(os.path.realpath(sys.executable)), Path(sys.base_prefix)
    if other_uid and not (_reachable(executable) and _reachable(prefix / "lib")) and SYSTEM_PYTHON.exists():
        return Path(os.path.realpath(SYSTEM_PYTHON)), Path("/usr")
    return executable, prefix


def _closure(name: str) -> list[metadata.Distribution]:
    """The distribution `name` and every distribution it requires on this interpreter, once each."""
    seen: dict[str, metadata.Distribution] = {}
    pending = [name]
    while pending:
        dist = metadata.distribution(pending.pop())
        key = dist.metadata["Name"].lower()
        if key in seen:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return list(seen.values())


def ensure(root: Path) -> Path:
    """The pytest-only environment under `root`, made now if this pytest version has none yet."""
    version = metadata.version(ROOT_DISTRIBUTION)
    target = root / f"pytest-{version}-py{sys.version_info.major}.{sys.version_info.minor}"
    if target.is_dir():
        return target
    building = root / f".building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    for dist in _closure(ROOT_DISTRIBUTION):
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            parts = Path(str(file)).parts
            # Only what lives in site-packages: not scripts (../../bin) nor byte code (rebuilt as needed).
            if not parts or parts[0] == ".." or "__pycache__" in parts or not source.is_file():
                continue
            destination = building / Path(*parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
    # Byte code made once here: the environment is read-only in the sandbox, and compiling pytest at every
    # run would be most of a run's overhead.
    compileall.compile_dir(building, quiet=2, workers=1)
    for path in [building, *building.rglob("*")]:
        # Readable by the sandbox's unprivileged uid, writable by nobody but the owner.
        path.chmod(0o755 if path.is_dir() else stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        building.rename(target)
    except OSError:
        shutil.rmtree(building, ignore_errors=True)  # another server made it first
    return target
