"""Checkpoints shipped inside the package (small enough for the repository, used offline)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_SYNC = "av_sync.pt"


def sync_checkpoint_path(setting: str) -> str:
    """``av_sync.checkpoint``: 'default' is the shipped checkpoint, anything else a file path."""
    if setting == "default":
        return str(Path(str(resources.files("operators.weights").joinpath(DEFAULT_SYNC))))
    return setting
