"""avfuse operators: encoders, signal features and fusion as plain modules, usable without Ray."""

from operators.audio import AudioEncoder, build_audio_encoder
from operators.audio_bundle import BundleAudioEncoder
from operators.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    is_avfuse_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from operators.device import autocast_for, resolve_device
from operators.fusion import FusionBatch, FusionModel, FusionOutput, WindowInput, build_fusion, collate_windows
from operators.signal_features import (
    AudioSignals,
    SignalFeatures,
    VideoSignals,
    frame_difference,
    histogram_distance,
    spectral_flux,
)
from operators.vision import VisionEncoder

__all__ = [
    "AudioEncoder",
    "AudioSignals",
    "BundleAudioEncoder",
    "CheckpointError",
    "CheckpointMismatchError",
    "FusionBatch",
    "FusionModel",
    "FusionOutput",
    "SignalFeatures",
    "VideoSignals",
    "VisionEncoder",
    "WindowInput",
    "autocast_for",
    "build_audio_encoder",
    "build_fusion",
    "collate_windows",
    "frame_difference",
    "histogram_distance",
    "is_avfuse_checkpoint",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "spectral_flux",
]
