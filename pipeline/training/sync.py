"""Self-supervised A/V-sync training: the trainer shifts the audio itself, so the truth is free.

A sample is one pipeline-shaped window (``align.window_s``) of one clip's cached tokens:
- positive: audio as it is (offset 0) or shifted by a known offset within the head's lag range
  (target: that lag, split between the two nearest lag bins);
- negative: audio from another clip (target: "no match").
Clips must be in sync to begin with; their tokens come from ``pipeline.training.clip_tokens``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from operators.av_sync import AVSyncHead, SyncSpec
from operators.fusion import WindowInput, collate_windows
from pipeline.core.config import Config
from pipeline.training.clip_tokens import PHASE_STEP_S, ClipTokens

log = logging.getLogger("avfuse.train")


@dataclass
class SyncTrainSettings:
    steps: int = 600
    batch_size: int = 48
    learning_rate: float = 3e-3
    negative_fraction: float = 0.2  # share of samples whose audio is another clip's
    zero_fraction: float = 0.2  # share of positives left in sync (offset 0 must be known well)
    seed: int = 0
    max_lag_s: float = 0.8
    lag_step_s: float = 0.1
    dim: int = 64


@dataclass
class TrainResult:
    head: AVSyncHead
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def shifted_window(clip: ClipTokens, start_s: float, window_s: float, shift_steps: int,
                   audio_from: ClipTokens | None = None, audio_from_s: float = 0.0) -> WindowInput:
    """The window [start_s, start_s + window_s) of ``clip`` with its audio late by
    ``shift_steps * PHASE_STEP_S`` (negative: early), on the pipeline's row grid.

    With ``audio_from``, the audio is that clip's from ``audio_from_s`` on instead (a negative).
    """
    video_sel = (clip.video_t_s >= start_s) & (clip.video_t_s < start_s + window_s)
    token_s, per_row = clip.token_s, int(round(clip.token_s / PHASE_STEP_S))
    grid = clip.audio_t_s(0)  # where the pipeline's rows of this clip start
    rows = np.nonzero((grid >= start_s - 1e-9) & (grid < start_s + window_s - 1e-9))[0]
    source = audio_from or clip
    if audio_from is None:
        phase = (-shift_steps) % per_row
        source_rows = rows - (shift_steps + phase) // per_row
    else:
        phase = 0
        first = int(round((audio_from_s - source.audio_t0_s) / token_s))
        source_rows = first + np.arange(len(rows))
    keep = (source_rows >= 0) & (source_rows < source.audio_tokens.shape[1])
    audio = source.audio_tokens[phase][source_rows[keep]]
    return WindowInput(start_s, clip.video_tokens[video_sel], clip.video_t_s[video_sel],
                       audio, grid[rows[keep]])


def lag_target(offset_s: float | None, lags_s: np.ndarray) -> np.ndarray:
    """[M + 1] target distribution: the offset split between its two nearest lags; None: no match."""
    target = np.zeros(len(lags_s) + 1, np.float32)
    if offset_s is None:
        target[-1] = 1.0
        return target
    step = float(lags_s[1] - lags_s[0])
    position = (offset_s - float(lags_s[0])) / step
    low = int(math.floor(position))
    frac = position - low
    target[min(max(low, 0), len(lags_s) - 1)] += 1.0 - frac
    target[min(max(low + 1, 0), len(lags_s) - 1)] += frac
    return target


class SyncSampler:
    def __init__(self, clips: Sequence[ClipTokens], window_s: float, spec: SyncSpec, seed: int):
        self.clips = [c for c in clips if c.has_video and c.has_audio and c.duration_s() >= window_s]
        if len(self.clips) < 2:
            raise ValueError("A/V-sync training needs at least two clips with video and audio, "
                             f"each at least {window_s:g} s long")
        per_row = int(round(self.clips[0].token_s / PHASE_STEP_S))
        if any(c.phases != per_row for c in self.clips):
            raise ValueError(f"clip tokens must be cut on {per_row} audio phases")
        self.window_s, self.spec = window_s, spec
        self.lags_s = spec.lags_s.numpy()
        self.max_steps = int(round(spec.max_lag_s / PHASE_STEP_S))
        self.rng = np.random.default_rng(seed)

    def sample(self, negative_fraction: float, zero_fraction: float) -> tuple[WindowInput, np.ndarray]:
        rng = self.rng
        index = int(rng.integers(len(self.clips)))
        clip = self.clips[index]
        start_s = float(rng.uniform(0.0, max(clip.duration_s() - self.window_s, 0.0)))
        if rng.random() < negative_fraction:
            other = self.clips[(index + 1 + int(rng.integers(len(self.clips) - 1))) % len(self.clips)]
            other_s = float(rng.uniform(0.0, max(other.duration_s() - self.window_s, 0.0)))
            return shifted_window(clip, start_s, self.window_s, 0, other, other_s), lag_target(None, self.lags_s)
        steps = 0 if rng.random() < zero_fraction else int(rng.integers(-self.max_steps, self.max_steps + 1))
        window = shifted_window(clip, start_s, self.window_s, steps)
        return window, lag_target(steps * PHASE_STEP_S, self.lags_s)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # -inf marks lags without audio; they carry no target mass, and 0 * -inf must not be NaN.
    log_p = torch.log_softmax(logits.clamp_min(-1e4), dim=-1)
    return -(target * log_p).sum(-1).mean()


def train_sync(clips: Sequence[ClipTokens], cfg: Config, settings: SyncTrainSettings) -> TrainResult:
    """Train a fresh AVSyncHead on ``clips`` (in sync, with 10 audio phases); CPU or ``runtime.device``."""
    torch.manual_seed(settings.seed)
    spec = SyncSpec(cfg.vision.embed_dim, cfg.audio_encoder.embed_dim, cfg.audio.token_s,
                    settings.max_lag_s, settings.lag_step_s, settings.dim)
    head = AVSyncHead(spec)
    sampler = SyncSampler(clips, cfg.align.window_s, spec, settings.seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.learning_rate, total_steps=settings.steps)
    result, started = TrainResult(head), time.monotonic()
    head.train()
    for step in range(settings.steps):
        samples = [sampler.sample(settings.negative_fraction, settings.zero_fraction)
                   for _ in range(settings.batch_size)]
        batch = collate_windows([w for w, _ in samples], "cpu", spec.video_dim, spec.audio_dim)
        target = torch.from_numpy(np.stack([t for _, t in samples]))
        loss = soft_cross_entropy(head(batch).logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        result.losses.append(float(loss.detach()))
        if step % 100 == 0 or step == settings.steps - 1:
            log.info("sync step %d/%d loss %.3f", step + 1, settings.steps, float(loss.detach()))
    head.eval()
    result.seconds = time.monotonic() - started
    return result
