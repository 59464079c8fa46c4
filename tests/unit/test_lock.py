"""The lock (requirements/constraints.txt) pins a version of every dependency pyproject.toml names, within its range.

scripts/test installs from the lock; a dependency added to pyproject.toml without a refreshed lock would be
installed at whatever version the index has that day, which is the drift the lock exists to stop.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def lock_lines() -> list[str]:
    """The lock's lines that are not comments."""
    text = (ROOT / "requirements" / "constraints.txt").read_text()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def locked() -> dict[str, Version]:
    """The lock's pins, by canonical package name."""
    return {canonicalize_name(name): Version(version) for name, _, version in (x.partition("==") for x in lock_lines())}


def requirements() -> list[Requirement]:
    """Every requirement of the package and its extras, for this platform, the package itself left out."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    named = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    found = [Requirement(r) for r in named]
    return [r for r in found if r.name != "facilitair" and (r.marker is None or r.marker.evaluate({"extra": ""}))]


def test_every_dependency_is_pinned_within_its_range() -> None:
    pins = locked()
    missing, outside = [], []
    for requirement in requirements():
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            missing.append(requirement.name)
        elif not requirement.specifier.contains(pin, prereleases=True):
            outside.append(f"{requirement.name}: {pin} not in {requirement.specifier}")
    assert (missing, outside) == ([], [])


def test_the_lock_pins_exact_versions_only() -> None:
    lines = lock_lines()
    assert lines
    assert all(line.count("==") == 1 and ";" not in line and " " not in line for line in lines)
