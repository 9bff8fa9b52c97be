"""What a trained head depends on, recorded in its checkpoint and compared when it loads.

Heads read frozen encoder tokens cut into windows: a head trained behind other encoders,
another frame rate or other windows would load without error and say nothing true.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel

from operators.weights_cache import file_sha256
from pipeline.core.config import Config


@lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime too, so a file rewritten in place is hashed again.
    return file_sha256(Path(path), "checkpoint")[:16]


def _encoder_settings(section: BaseModel) -> dict:
    """The section's settings, with a weights file named by its content: the same weights at
    another path are the same encoder, other weights at the same path are not."""
    settings = section.model_dump(mode="json")
    path = settings.pop("checkpoint", None)
    if path:
        stat = Path(path).stat() if Path(path).is_file() else None
        settings["checkpoint_sha256"] = _file_sha256(path, stat.st_size, stat.st_mtime_ns) if stat else path
    return settings


def encoder_preprocessing(cfg: Config) -> dict:
    """Everything that changes the tokens: a cache entry or a checkpoint is valid only for this."""
    return {
        "video_fps": cfg.video.fps,
        "image_size": cfg.video.image_size,
        "sample_rate_hz": cfg.audio.sample_rate_hz,
        "token_s": cfg.audio.token_s,
        # Flat keys, so that a mismatch names the one setting that differs.
        **{f"vision.{key}": value for key, value in _encoder_settings(cfg.vision).items()},
        **{f"audio_encoder.{key}": value for key, value in _encoder_settings(cfg.audio_encoder).items()},
    }


def trained_behind(cfg: Config) -> dict:
    """What a head trained on windows of tokens depends on: the encoders and the window length."""
    return {**encoder_preprocessing(cfg), "window_s": cfg.align.window_s}
