"""Batch functions of the shared operator stages, placed by Ray but runnable without it.

Each ``run_batch`` takes one item per request (usually one chunk of one stream),
concatenates them into a single forward pass, and splits the result back, so a
GPU sees one batch for many streams. Inputs arrive as numpy arrays that Ray has
mapped from its object store; ``torch.from_numpy`` shares them without copying.
"""

from __future__ import annotations

import numpy as np
import torch

from operators import (
    AudioEncoder,
    SignalFeatures,
    VisionEncoder,
    WindowInput,
    autocast_for,
    build_fusion,
    collate_windows,
    resolve_device,
)
from pipeline.config import Config
from pipeline.media import AudioRows, EncodedAudio, EncodedVideo, VideoFrames


def _split(array: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    return np.split(array, np.cumsum(lengths)[:-1])


def _run_concatenated(inputs: list[np.ndarray], device: torch.device, forward) -> list[list[np.ndarray]]:
    """One ``forward`` over the inputs stacked along dim 0; returns each input's share of every output.

    ``forward`` takes the stacked tensor on ``device`` and returns a tuple of tensors whose
    first dim matches it; shares come back as float32 numpy arrays in input order.
    """
    lengths = [len(x) for x in inputs]
    stacked = np.concatenate(inputs) if len(inputs) > 1 else inputs[0]
    outputs = forward(torch.from_numpy(stacked).to(device, non_blocking=True))
    per_output = [_split(t.float().cpu().numpy(), lengths) for t in outputs]
    return [[parts[i] for parts in per_output] for i in range(len(inputs))]


class VisionStage:
    def __init__(self, cfg: Config):
        self.device = resolve_device(cfg.runtime.device)
        self.encoder = VisionEncoder(cfg.vision, cfg.video.image_size).prepare_for_inference().to(self.device)
        self.signals = SignalFeatures().to(self.device)

    def _forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with autocast_for(self.device):
            tokens = self.encoder(frames)
        sig = self.signals.video(frames)
        return tokens, sig.luma_mean, sig.color_hist, sig.luma_thumb

    @torch.inference_mode()
    def run_batch(self, items: list[VideoFrames]) -> list[EncodedVideo]:
        shares = _run_concatenated([item.frames_rgb_u8 for item in items], self.device, self._forward)
        return [EncodedVideo(item.pts_s, *share) for item, share in zip(items, shares)]


class AudioStage:
    SUBFRAME_S = 0.01  # SignalFeatures.audio measures loudness and bands per 10 ms

    def __init__(self, cfg: Config):
        self.device = resolve_device(cfg.runtime.device)
        self.sample_rate_hz = cfg.audio.sample_rate_hz
        row_samples = int(round(cfg.audio.sample_rate_hz * cfg.audio.token_s))
        self.encoder = AudioEncoder(cfg.audio_encoder, cfg.audio.sample_rate_hz, row_samples).to(self.device).eval()
        self.signals = SignalFeatures().to(self.device)

    def _forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with autocast_for(self.device):
            tokens = self.encoder(rows)
        sig = self.signals.audio(rows, self.sample_rate_hz)
        return tokens, sig.rms_dbfs, sig.band_log_energy

    @torch.inference_mode()
    def run_batch(self, items: list[AudioRows]) -> list[EncodedAudio]:
        shares = _run_concatenated([item.samples_f32 for item in items], self.device, self._forward)
        return [EncodedAudio(item.start_s, *share, subframe_s=self.SUBFRAME_S) for item, share in zip(items, shares)]


class FusionStage:
    """Fuses windows; one request is the list of windows one stream has ready."""

    def __init__(self, cfg: Config):
        self.device = resolve_device(cfg.runtime.device)
        self.fusion = build_fusion(cfg.fusion, cfg.vision.embed_dim, cfg.audio_encoder.embed_dim).to(self.device).eval()

    @torch.inference_mode()
    def run_batch(self, items: list[list[WindowInput]]) -> list[np.ndarray]:
        lengths = [len(item) for item in items]
        windows = [w for item in items for w in item]
        batch = collate_windows(windows, self.device)
        with autocast_for(self.device):
            out = self.fusion(batch)
        embeddings = out.embedding.float().cpu().numpy()
        return _split(embeddings, lengths)
