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


class VisionStage:
    def __init__(self, cfg: Config):
        self.device = resolve_device(cfg.runtime.device)
        self.encoder = VisionEncoder(cfg.vision, cfg.video.image_size).to(self.device).eval()
        self.signals = SignalFeatures().to(self.device)

    @torch.inference_mode()
    def run_batch(self, items: list[VideoFrames]) -> list[EncodedVideo]:
        lengths = [len(item) for item in items]
        frames = np.concatenate([item.frames_rgb_u8 for item in items]) if len(items) > 1 else items[0].frames_rgb_u8
        frames_t = torch.from_numpy(frames).to(self.device, non_blocking=True)
        with autocast_for(self.device):
            tokens = self.encoder(frames_t).float()
        sig = self.signals.video(frames_t)
        columns = [t.float().cpu().numpy() for t in (tokens, sig.luma_mean, sig.color_hist, sig.luma_thumb)]
        per_item = [_split(c, lengths) for c in columns]
        return [
            EncodedVideo(item.pts_s, *(parts[i] for parts in per_item))
            for i, item in enumerate(items)
        ]


class AudioStage:
    def __init__(self, cfg: Config):
        self.device = resolve_device(cfg.runtime.device)
        self.sample_rate_hz = cfg.audio.sample_rate_hz
        row_samples = int(round(cfg.audio.sample_rate_hz * cfg.audio.token_s))
        self.encoder = AudioEncoder(cfg.audio_encoder, cfg.audio.sample_rate_hz, row_samples).to(self.device).eval()
        self.signals = SignalFeatures().to(self.device)

    @torch.inference_mode()
    def run_batch(self, items: list[AudioRows]) -> list[EncodedAudio]:
        lengths = [len(item) for item in items]
        rows = np.concatenate([item.samples_f32 for item in items]) if len(items) > 1 else items[0].samples_f32
        rows_t = torch.from_numpy(rows).to(self.device, non_blocking=True)
        with autocast_for(self.device):
            tokens = self.encoder(rows_t).float()
        sig = self.signals.audio(rows_t, self.sample_rate_hz)
        subframe_s = 1.0 / 100
        columns = [t.float().cpu().numpy() for t in (tokens, sig.rms_dbfs, sig.band_log_energy)]
        per_item = [_split(c, lengths) for c in columns]
        return [
            EncodedAudio(item.start_s, *(parts[i] for parts in per_item), subframe_s=subframe_s)
            for i, item in enumerate(items)
        ]


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
