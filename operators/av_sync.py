"""A/V synchrony of one window: cross-modal attention of video tokens over audio tokens at time lags.

Every video token (a frame at t) is compared with the audio heard at t + lag for a grid of
lags; the comparison is a scaled dot product of learned projections (attention logits), and
the audio "at t + lag" is interpolated between the audio tokens around it. Averaging over the
window's frames gives one logit per lag; one more learned logit stands for "no match" (the
audio is not this video's, or the window says nothing about timing). Softmax over them is the
window's belief about the offset. Trained self-supervised (``pipeline.training.sync``): the
truth is known because the trainer shifts the audio itself.

Sign convention: a positive lag means the audio is late (a sound is heard after its picture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from operators.checkpoint import (
    check_checkpoint,
    check_trained_behind,
    load_state_strict,
    read_torch_file,
    save_checkpoint,
    seeded_init,
)
from operators.fusion import FusionBatch

KIND = "av_sync"


@dataclass(frozen=True)
class SyncSpec:
    """The lag grid and token geometry a sync head is built for (recorded in its checkpoint)."""

    video_dim: int
    audio_dim: int
    token_s: float  # audio token length; audio token j is centred at its start + token_s / 2
    max_lag_s: float = 0.8
    lag_step_s: float = 0.1
    dim: int = 64

    @property
    def lags_s(self) -> torch.Tensor:
        count = int(round(self.max_lag_s / self.lag_step_s))
        return torch.arange(-count, count + 1, dtype=torch.float32) * self.lag_step_s

    def as_dict(self) -> dict[str, Any]:
        return {"video_dim": self.video_dim, "audio_dim": self.audio_dim, "token_s": self.token_s,
                "max_lag_s": self.max_lag_s, "lag_step_s": self.lag_step_s, "dim": self.dim}


@dataclass
class SyncOutput:
    """logits [B, M + 1] float32: M lags (``lags_s``) then "no match"; -inf where a lag had no
    frame with audio around it. valid [B] bool: the window has both modalities (rows without
    are all -inf but "no match", which is 0)."""

    logits: torch.Tensor
    valid: torch.Tensor


def _temporal_encoder(in_dim: int, dim: int) -> nn.Module:
    # Conv over neighbouring tokens' changes: a sync cue is an onset, not a level, and levels
    # (what a scene looks like) are what a small training set would be memorised by.
    return nn.Sequential(_Transpose(), nn.Conv1d(in_dim + 1, dim, 3, padding=1), nn.GELU(),
                         nn.Conv1d(dim, dim, 3, padding=1), _Transpose())


def token_changes(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> [B, T, D + 1]: unit direction of the change from the previous token, and
    log(1 + its size relative to the window's median change); zeros at the first and padded tokens."""
    if tokens.shape[1] < 2:  # a single token has no change
        return tokens.new_zeros(tokens.shape[0], tokens.shape[1], tokens.shape[2] + 1)
    diff = tokens[:, 1:] - tokens[:, :-1]
    both = (mask[:, 1:] & mask[:, :-1]).unsqueeze(-1)
    diff = torch.where(both, diff, torch.zeros((), device=tokens.device))
    size = diff.norm(dim=-1, keepdim=True)
    typical = torch.where(both, size, torch.full_like(size, float("nan"))).nanmedian(dim=1, keepdim=True).values
    relative = torch.log1p(size / typical.nan_to_num(1.0).clamp_min(1e-6))
    features = torch.cat([diff / size.clamp_min(1e-6), relative], dim=-1)
    return nn.functional.pad(features, (0, 0, 1, 0))


class _Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class AVSyncHead(nn.Module):
    """FusionBatch -> SyncOutput. Each window's result depends on that window alone."""

    def __init__(self, spec: SyncSpec):
        super().__init__()
        self.spec = spec
        with seeded_init():
            self.video_encoder = _temporal_encoder(spec.video_dim, spec.dim)
            self.audio_encoder = _temporal_encoder(spec.audio_dim, spec.dim)
            self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.no_match = nn.Parameter(torch.zeros(()))
        self.register_buffer("lags_s", spec.lags_s, persistent=False)
        self.eval()

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.spec.as_dict()

    def forward(self, batch: FusionBatch) -> SyncOutput:
        video_mask, audio_mask = batch.video_mask, batch.audio_mask
        zero = torch.zeros((), device=batch.video.device)
        q = nn.functional.normalize(self.video_encoder(token_changes(batch.video.float(), video_mask)), dim=-1)
        k = nn.functional.normalize(self.audio_encoder(token_changes(batch.audio.float(), audio_mask)), dim=-1)
        q = torch.where(video_mask.unsqueeze(-1), q, zero)
        k = torch.where(audio_mask.unsqueeze(-1), k, zero)
        logits_vt_at = torch.einsum("bvd,bad->bva", q, k) * self.log_scale.exp()  # [B, Tv, Ta]
        # Triangle interpolation: the audio at time tau is a mix of the tokens centred around it.
        centres = batch.audio_t_s + self.spec.token_s / 2  # [B, Ta]
        target = batch.video_t_s.unsqueeze(-1) + self.lags_s  # [B, Tv, M]
        distance = (centres[:, None, None, :] - target.unsqueeze(-1)).abs()  # [B, Tv, M, Ta]
        weights = (1.0 - distance / self.spec.token_s).clamp_min(0.0) * audio_mask[:, None, None, :]
        coverage = weights.sum(-1)  # [B, Tv, M]; < 1 at the window's edges
        per_frame = torch.einsum("bvma,bva->bvm", weights, logits_vt_at) / coverage.clamp_min(1e-6)
        used = (coverage > 0.5) & video_mask.unsqueeze(-1)  # frames whose lagged audio is there
        count = used.sum(1)  # [B, M]
        lag_logits = torch.where(used, per_frame, zero).sum(1) / count.clamp_min(1)
        lag_logits = lag_logits.masked_fill(count == 0, float("-inf"))
        valid = video_mask.any(1) & audio_mask.any(1)
        lag_logits = torch.where(valid.unsqueeze(-1), lag_logits, torch.full_like(lag_logits, float("-inf")))
        no_match = self.no_match.expand(lag_logits.shape[0], 1)
        no_match = torch.where(valid.unsqueeze(-1), no_match, zero)
        return SyncOutput(torch.cat([lag_logits, no_match], dim=1).float(), valid)

    def save(self, path: str | Path, extra: Mapping[str, Any] | None = None) -> None:
        save_checkpoint(path, KIND, self.state_dict(), self.preprocessing, extra=extra)


def load_sync_head(path: str | Path, video_dim: int, audio_dim: int, token_s: float,
                   expected: Mapping[str, Any] | None = None) -> tuple[AVSyncHead, dict]:
    """Build the head a checkpoint describes and load it; returns (head, checkpoint extra).

    The checkpoint's own lag grid is used; its token widths and ``token_s`` must equal the
    pipeline's, and when ``expected`` (``provenance.trained_behind``) is given, the encoders
    and windows it was trained behind must be the configured ones, else CheckpointMismatchError.
    """
    obj = read_torch_file(path)
    recorded = obj.get("preprocessing", {}) if isinstance(obj, dict) else {}
    spec = SyncSpec(video_dim, audio_dim, token_s, **{key: recorded[key] for key in
                                                       ("max_lag_s", "lag_step_s", "dim") if key in recorded})
    check_checkpoint(obj, path, KIND, spec.as_dict())
    if expected is not None:
        check_trained_behind(obj, path, KIND, expected)
    head = AVSyncHead(spec)
    load_state_strict(head, obj["state_dict"], path)
    head.eval()
    return head, dict(obj.get("extra", {}))


def lag_posterior(logits: torch.Tensor) -> torch.Tensor:
    """[B, M + 1] logits -> [B, M + 1] probabilities (lags, then no match)."""
    return torch.softmax(logits, dim=-1)
