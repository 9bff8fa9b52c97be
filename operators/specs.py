"""What each operator is built from, as small frozen dataclasses: torch-free, so the config
(``pipeline.compute.operator_specs``) fills them without loading a model library."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VisionSpec:
    """What a VisionEncoder is built from: a torchvision backbone, its weights (an avfuse checkpoint or
    state_dict file, or torchvision's published ``weights`` name), the embedding width, and the
    normalisation the weights were trained with."""

    backbone: str = "mobilenet_v3_small"
    checkpoint: str | None = None
    weights: str | None = None
    embed_dim: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AudioEncoderSpec:
    """What an audio encoder is built from. kind: mel_conv (log-mel + conv stack: n_mels, n_fft,
    hop_length) or torchaudio_bundle (a wav2vec2 / HuBERT / WavLM bundle of torchaudio.pipelines);
    checkpoint: an avfuse checkpoint (a bundle also takes its state_dict file)."""

    kind: str = "mel_conv"
    bundle: str | None = None
    checkpoint: str | None = None
    n_mels: int = 64
    n_fft: int = 400
    hop_length: int = 160
    embed_dim: int = 256


@dataclass(frozen=True)
class FusionSpec:
    """What a FusionModel is built from: strategy (cross_attention, concat or weighted), width, heads,
    and an optional avfuse checkpoint of kind 'fusion'."""

    strategy: str = "cross_attention"
    checkpoint: str | None = None
    dim: int = 256
    heads: int = 4
