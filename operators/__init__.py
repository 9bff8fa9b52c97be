"""avfuse operators: encoders, signal features and fusion as plain modules, usable without Ray.

Names load on first use (PEP 562), so that importing one torch-free module of the
package (``operators.windows``, ``operators.continuity``, ``operators.lag_offset``,
``operators.imagenet_classes``, ``operators.audioset``, ``operators.speech``) does not
import torch: a stream actor uses those, and stays a small process.
"""

from __future__ import annotations

import importlib

_HOME = {
    "AudioEncoder": "operators.audio",
    "build_audio_encoder": "operators.audio",
    "BundleAudioEncoder": "operators.audio_bundle",
    "CheckpointError": "operators.checkpoint_errors",
    "CheckpointMismatchError": "operators.checkpoint_errors",
    "is_avfuse_checkpoint": "operators.checkpoint",
    "load_checkpoint": "operators.checkpoint",
    "save_checkpoint": "operators.checkpoint",
    "autocast_for": "operators.device",
    "resolve_device": "operators.device",
    "FusionBatch": "operators.fusion",
    "FusionModel": "operators.fusion",
    "FusionOutput": "operators.fusion",
    "build_fusion": "operators.fusion",
    "collate_windows": "operators.fusion",
    "WindowInput": "operators.windows",
    "AudioSignals": "operators.signal_features",
    "SignalFeatures": "operators.signal_features",
    "VideoSignals": "operators.signal_features",
    "frame_difference": "operators.continuity",
    "histogram_distance": "operators.continuity",
    "spectral_flux": "operators.continuity",
    "VisionEncoder": "operators.vision",
}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'operators' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return __all__
