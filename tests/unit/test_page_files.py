"""The web page's files, read as files: nothing in them can turn received text into markup or fetch from
elsewhere, and the page needs no inline script or style (the gateway's content-security-policy forbids both).

The browser tests (tests/test_page.py) show the same in Chromium; these name the line that broke the rule.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

STATIC = Path(__file__).resolve().parents[2] / "service" / "facilitair" / "server" / "gateway" / "static"
# The DOM's ways of parsing a string as HTML or running it as code.
SINKS = re.compile(
    r"\.innerHTML|\.outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function\(|createContextualFragment"
    r"|setTimeout\(\s*['\"`]|setInterval\(\s*['\"`]|DOMParser|srcdoc"
)


def scripts() -> list[Path]:
    return sorted(STATIC.glob("*.js"))


def test_the_page_has_its_files() -> None:
    names = {p.name for p in STATIC.iterdir()}
    assert {"index.html", "app.js", "app.css"} <= names


def test_no_script_puts_text_into_the_page_as_html() -> None:
    found = [
        f"{path.name}:{n}: {line.strip()}"
        for path in scripts()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if SINKS.search(line)
    ]
    assert found == []


def test_nothing_is_fetched_from_elsewhere() -> None:
    found = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted(STATIC.iterdir())
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", line, re.IGNORECASE) or "@import" in line
    ]
    assert found == []


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        handlers = [name for name in named if name.startswith("on")]
        if handlers:
            self.problems.append(f"<{tag}> has inline handlers {handlers}")
        if "style" in named or tag == "style":
            self.problems.append(f"<{tag}> has inline style")
        if tag == "script":
            self.in_script = True
            if not named.get("src"):
                self.problems.append("<script> without src (inline script)")

    def handle_endtag(self, tag: str) -> None:
        self.in_script = self.in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self.in_script and data.strip():
            self.problems.append("<script> with inline code")


def test_the_html_has_no_inline_script_or_style() -> None:
    parser = _Tags()
    parser.feed((STATIC / "index.html").read_text())
    assert parser.problems == []
