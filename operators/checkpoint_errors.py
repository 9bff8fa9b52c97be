"""The errors of unusable weights, torch-free so that class maps and vocabularies can raise them too."""

from __future__ import annotations

__all__ = ["CheckpointError", "CheckpointMismatchError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line for the user."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was made for other preprocessing than the config asks for."""
