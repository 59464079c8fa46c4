"""The JUnit report reader (sandbox/junit.py): counts and node ids from pytest's report, nothing from a hostile one."""

from __future__ import annotations

from pathlib import Path

from facilitair.server.sandbox import junit

REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="2" skipped="1" tests="6" time="0.1">
<testcase classname="tests.test_rev" name="test_ok" file="tests/test_rev.py" line="3" time="0.001"/>
<testcase classname="tests.test_rev.TestRev" name="test_empty" file="tests/test_rev.py" line="9" time="0.001">
<failure message="AssertionError: assert '' == 'x'">long traceback
E   AssertionError: assert '' == 'x'</failure></testcase>
<testcase classname="test_top" name="test_bad" file="test_top.py" line="1" time="0.001">
<failure message="ZeroDivisionError: division by zero">trace</failure></testcase>
<testcase classname="tests.test_rev" name="test_setup" file="tests/test_rev.py" line="12" time="0.001">
<error message="failed on setup with &quot;fixture 'db' not found&quot;">setup</error></testcase>
</testsuite></testsuites>"""


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "report.xml"
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    return path


def test_counts_and_failures_are_read_with_pytest_node_ids(tmp_path: Path) -> None:
    counts = junit.read(write(tmp_path, REPORT))
    assert counts is not None
    assert (counts.tests, counts.passed, counts.failed, counts.errors, counts.skipped) == (6, 2, 2, 1, 1)
    assert [(f.name, f.message) for f in counts.failures] == [
        ("tests/test_rev.py::TestRev::test_empty", "AssertionError: assert '' == 'x'"),
        ("test_top.py::test_bad", "ZeroDivisionError: division by zero"),
        ("tests/test_rev.py::test_setup", "failed on setup with \"fixture 'db' not found\""),
    ]
    assert counts.failures[0].excerpt.endswith("E   AssertionError: assert '' == 'x'")


def test_a_report_that_declares_entities_is_refused_unparsed(tmp_path: Path) -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        '<testsuite tests="1" failures="0" errors="0" skipped="0"><testcase name="&lol2;"/></testsuite>'
    )
    assert junit.read(write(tmp_path, bomb)) is None


def test_an_oversized_a_broken_or_a_missing_report_is_none(tmp_path: Path) -> None:
    assert junit.read(write(tmp_path, b"<testsuite>" + b" " * junit.MAX_REPORT_BYTES)) is None
    assert junit.read(write(tmp_path, "<testsuite tests='1'")) is None
    assert junit.read(write(tmp_path, "<html/>")) is None
    assert junit.read(tmp_path / "absent.xml") is None


def test_failures_listed_are_bounded(tmp_path: Path) -> None:
    cases = "".join(
        f'<testcase classname="t" name="test_{n}" file="t.py"><failure message="m{n}">x</failure></testcase>'
        for n in range(50)
    )
    counts = junit.read(write(tmp_path, f'<testsuite tests="50" failures="50">{cases}</testsuite>'))
    assert counts is not None
    assert counts.failed == 50
    assert len(counts.failures) == junit.MAX_FAILURES
