"""Fusion of one aligned window's video and audio tokens into one embedding.

Windows from many streams are fused in one batch: ``collate_windows`` pads
their token sequences and builds masks, and ``FusionModel`` runs one of the
strategies in ``operators.fusion_strategies`` on the batch. Each window's
result depends on that window alone, never on what it was batched with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from operators.checkpoint import load_module_checkpoint, save_checkpoint, seeded_init
from operators.device import autocast_for, module_device
from operators.fusion_strategies import STRATEGIES
from operators.specs import FusionSpec
from operators.windows import WindowInput

KIND = "fusion"


@dataclass
class FusionBatch:
    """B padded windows, tensors on one device.

    video [B, Tv, Dv] float32, video_mask [B, Tv] bool (True = real token),
    video_t_s [B, Tv] float32 seconds from each window's start; audio likewise.
    Tv, Ta >= 1; padded positions hold zeros.
    """

    video: torch.Tensor
    video_mask: torch.Tensor
    video_t_s: torch.Tensor
    audio: torch.Tensor
    audio_mask: torch.Tensor
    audio_t_s: torch.Tensor

    @property
    def present(self) -> torch.Tensor:
        """[B, 2] bool: whether each window has any video / audio token."""
        return torch.stack([self.video_mask.any(dim=1), self.audio_mask.any(dim=1)], dim=1)


@dataclass
class FusionOutput:
    """embedding [B, dim] float32 (all zeros where both modalities are missing);
    video_over_audio_attn [B, Tv, Ta] float32 head-averaged weights of each video token
    over audio tokens (zeros where a window lacks a modality), or None for strategies
    without cross-attention; present [B, 2] bool (video, audio)."""

    embedding: torch.Tensor
    video_over_audio_attn: torch.Tensor | None
    present: torch.Tensor


def _pad(
    windows: Sequence[WindowInput], modality: str, dim: int | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seqs = []
    for w in windows:
        tokens, t_s = getattr(w, f"{modality}_tokens"), getattr(w, f"{modality}_t_s")
        if tokens is not None and (tokens.ndim != 2 or t_s is None or np.shape(t_s) != (tokens.shape[0],)):
            raise ValueError(f"{modality}_tokens must be [T, D] with {modality}_t_s [T]")
        seqs.append((tokens, t_s) if tokens is not None and len(tokens) else None)
    if dim is None:  # take it from any window that has the modality, even with zero rows
        dim = next((getattr(w, f"{modality}_tokens").shape[1] for w in windows
                    if getattr(w, f"{modality}_tokens") is not None), 0)
    length = max([1] + [len(s[0]) for s in seqs if s is not None])
    tokens = np.zeros((len(windows), length, dim), dtype=np.float32)
    mask = np.zeros((len(windows), length), dtype=bool)
    t_rel = np.zeros((len(windows), length), dtype=np.float32)
    for row, (w, seq) in enumerate(zip(windows, seqs)):
        if seq is not None:
            n = len(seq[0])
            tokens[row, :n], mask[row, :n] = seq[0], True
            # Subtract in float64: absolute stream times lose ms precision in float32.
            t_rel[row, :n] = np.asarray(seq[1], dtype=np.float64) - float(w.start_s)
    return tuple(torch.from_numpy(a).to(device) for a in (tokens, mask, t_rel))


def collate_windows(
    windows: Sequence[WindowInput],
    device: torch.device | str = "cpu",
    video_dim: int | None = None,
    audio_dim: int | None = None,
) -> FusionBatch:
    """Pad B windows to the longest sequence per modality (at least 1) and move them to ``device``.

    ``video_dim`` / ``audio_dim`` default to the width of any window's tokens
    (0 when no window carries that modality).
    """
    device = torch.device(device)
    video, video_mask, video_t_s = _pad(windows, "video", video_dim, device)
    audio, audio_mask, audio_t_s = _pad(windows, "audio", audio_dim, device)
    return FusionBatch(video, video_mask, video_t_s, audio, audio_mask, audio_t_s)


def _clean(tokens: torch.Tensor, mask: torch.Tensor, dim: int, name: str) -> torch.Tensor:
    """Tokens with padded positions zeroed; a batch without the modality may have any width."""
    if tokens.shape[-1] != dim:
        if mask.any():
            raise ValueError(f"fusion expects {name} tokens of width {dim}, got {tokens.shape[-1]}")
        return tokens.new_zeros(tokens.shape[0], tokens.shape[1], dim)
    return torch.where(mask.unsqueeze(-1), tokens.float(), torch.zeros((), device=tokens.device))


class FusionModel(nn.Module):
    """``cfg.strategy`` behind one interface: ``forward(FusionBatch) -> FusionOutput``.

    Runs on the module's device (the batch must be there too); built in eval
    mode with deterministic weights unless ``cfg.checkpoint`` (kind 'fusion') is set.
    """

    def __init__(self, cfg: FusionSpec, video_dim: int, audio_dim: int):
        super().__init__()
        if cfg.strategy not in STRATEGIES:
            raise ValueError(f"fusion.strategy must be one of {sorted(STRATEGIES)}, got {cfg.strategy!r}")
        if cfg.strategy != "weighted" and cfg.dim % cfg.heads:
            raise ValueError(f"fusion.dim={cfg.dim} must be divisible by fusion.heads={cfg.heads}")
        self.cfg, self.video_dim, self.audio_dim = cfg, int(video_dim), int(audio_dim)
        with seeded_init():
            self.strategy = STRATEGIES[cfg.strategy](cfg.dim, cfg.heads, self.video_dim, self.audio_dim)
        if cfg.checkpoint:
            load_module_checkpoint(self, cfg.checkpoint, KIND)
        self.eval()

    @property
    def preprocessing(self) -> dict:
        c = self.cfg
        return {"strategy": c.strategy, "dim": c.dim, "heads": c.heads,
                "video_dim": self.video_dim, "audio_dim": self.audio_dim}

    def collate(self, windows: Sequence[WindowInput]) -> FusionBatch:
        return collate_windows(windows, module_device(self), self.video_dim, self.audio_dim)

    def forward(self, batch: FusionBatch) -> FusionOutput:
        video = _clean(batch.video, batch.video_mask, self.video_dim, "video")
        audio = _clean(batch.audio, batch.audio_mask, self.audio_dim, "audio")
        present = batch.present
        embedding, attn = self.strategy(
            video, batch.video_mask, batch.video_t_s, audio, batch.audio_mask, batch.audio_t_s
        )
        # A window with nothing in it has nothing to say: exact zeros, never NaN.
        zero = torch.zeros((), device=video.device)
        embedding = torch.where(present.any(dim=1, keepdim=True), embedding.float(), zero)
        return FusionOutput(embedding, None if attn is None else attn.float(), present)

    def fuse(self, windows: Sequence[WindowInput]) -> FusionOutput:
        """Collate, then run under inference mode and the device's autocast."""
        device = module_device(self)
        with torch.inference_mode(), autocast_for(device):
            return self(self.collate(windows))

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, KIND, self.state_dict(), self.preprocessing)


def build_fusion(cfg: FusionSpec, video_dim: int, audio_dim: int) -> FusionModel:
    """The configured fusion strategy for tokens of the given widths."""
    return FusionModel(cfg, video_dim, audio_dim)
