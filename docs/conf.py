"""Sphinx configuration of Facilitair's documentation (Markdown pages read by MyST).

The build is strict (scripts/test runs `sphinx-build -W --keep-going -n`): a link to a page or a heading
that does not exist, a page left out of the table of contents, or a file link to nothing fails it.
"""

project = "Facilitair"
author = "The Facilitair developers"
extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
# `page.md#heading` links resolve to the heading's GitHub-style slug, so they work on GitHub too.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
html_theme = "furo"
html_title = "Facilitair"
