"""Read pytest's JUnit XML report into a TestReport, bounded: the file was written by code under test."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from facilitair.server.domain import TestFailure

MAX_REPORT_BYTES = 4 * 1024 * 1024
MAX_FAILURES = 20  # listed in the event and the Refiner's prompt; the counts cover the rest
MAX_MESSAGE = 500
MAX_EXCERPT = 1500  # the end of a traceback, where the assertion is


class Counts:
    """Test counts and failures read from a report."""

    def __init__(self) -> None:
        self.tests = 0
        self.failed = 0
        self.errors = 0
        self.skipped = 0
        self.failures: list[TestFailure] = []

    @property
    def passed(self) -> int:
        """The tests that neither failed, errored nor were skipped."""
        return max(self.tests - self.failed - self.errors - self.skipped, 0)


def _int(element: ET.Element, name: str) -> int:
    try:
        return max(int(element.get(name, "0")), 0)
    except ValueError:
        return 0


def read(path: Path) -> Counts | None:
    """The counts of the report at `path`; None when there is none, or it is too large or not a report."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_REPORT_BYTES + 1)
    except OSError:
        return None
    # pytest never writes a DOCTYPE: refusing one refuses entity expansion bombs before any parsing.
    if len(data) > MAX_REPORT_BYTES or b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        return None
    try:
        root = ET.fromstring(data)  # noqa: S314 - see above
    except ET.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if not suites:
        return None
    counts = Counts()
    for suite in suites:
        counts.tests += _int(suite, "tests")
        counts.failed += _int(suite, "failures")
        counts.errors += _int(suite, "errors")
        counts.skipped += _int(suite, "skipped")
        for case in suite.iter("testcase"):
            for outcome in ("failure", "error"):
                found = case.find(outcome)
                if found is not None and len(counts.failures) < MAX_FAILURES:
                    counts.failures.append(_failure(case, found))
    return counts


def _failure(case: ET.Element, found: ET.Element) -> TestFailure:
    """A failed test's name as pytest's node id ("tests/test_x.py::TestY::test_z"), message and traceback end."""
    path = case.get("file", "")
    dotted = case.get("classname", "")
    module = path.removesuffix(".py").replace("/", ".")
    inner = dotted[len(module) + 1 :] if path and dotted.startswith(module + ".") else "" if path else dotted
    node = "::".join(part for part in (path, *inner.split("."), case.get("name", "")) if part)
    message = (found.get("message") or "").strip()
    text = (found.text or "").strip()
    return TestFailure(node[:300], message[:MAX_MESSAGE], text[-MAX_EXCERPT:])
