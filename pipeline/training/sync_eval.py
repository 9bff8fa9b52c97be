"""Run a sync head over a clip's tokens the way the pipeline cuts windows, and estimate its offset."""

from __future__ import annotations

import numpy as np
import torch

from operators.av_sync import AVSyncHead, lag_posterior
from operators.fusion import WindowInput, collate_windows
from pipeline.core.config import Config
from pipeline.stream.alignment import WindowSpec
from pipeline.stream.sync_tracker import SyncEstimate, SyncTracker
from pipeline.training.clip_tokens import ClipTokens


def pipeline_windows(clip: ClipTokens, window_s: float, hop_s: float) -> list[WindowInput]:
    """The aligner's windows (``WindowSpec``) over the clip, with its phase-0 audio rows."""
    spec, audio_t_s = WindowSpec(window_s, hop_s), clip.audio_t_s(0)
    windows, index = [], 0
    while spec.start_s(index) < clip.duration_s():
        start_s, end_s = spec.start_s(index), spec.end_s(index)
        v = (clip.video_t_s >= start_s) & (clip.video_t_s < end_s)
        a = (audio_t_s >= start_s - 1e-9) & (audio_t_s < end_s - 1e-9)
        windows.append(WindowInput(start_s, clip.video_tokens[v], clip.video_t_s[v],
                                   clip.audio_tokens[0][a], audio_t_s[a]))
        index += 1
    return windows


@torch.inference_mode()
def window_probabilities(head: AVSyncHead, windows: list[WindowInput], cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """([W, M + 1] probabilities, [W] valid) for the windows."""
    batch = collate_windows(windows, "cpu", cfg.vision.embed_dim, cfg.audio_encoder.embed_dim)
    out = head(batch)
    return lag_posterior(out.logits).numpy(), out.valid.numpy()


def estimate_clip(head: AVSyncHead, clip: ClipTokens, cfg: Config) -> SyncEstimate | None:
    """The whole-clip offset estimate the pipeline's final summary would report."""
    windows = pipeline_windows(clip, cfg.align.window_s, cfg.align.hop_s)
    probs, valid = window_probabilities(head, windows, cfg)
    tracker = SyncTracker(clip.path, cfg.av_sync, head.lags_s.numpy())
    for window, p, ok in zip(windows, probs, valid):
        if ok:
            tracker.add(window.start_s, window.start_s + cfg.align.window_s, p)
    return tracker.estimate(whole_stream=True)
