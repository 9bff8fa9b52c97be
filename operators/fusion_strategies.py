"""The three fusion strategies behind ``operators.fusion.FusionModel``.

Each strategy is an nn.Module with one tensor interface::

    forward(video [B, Tv, Dv], video_mask [B, Tv] bool, video_t_s [B, Tv],
            audio [B, Ta, Da], audio_mask [B, Ta] bool, audio_t_s [B, Ta])
        -> (embedding [B, dim], video_over_audio_attn [B, Tv, Ta] or None)

Masks are True on real tokens; times are seconds from the window start;
padded token values are already zero. A window may lack a modality entirely
(its mask row is all False). Such rows never enter an attention whose keys
would all be masked (softmax over nothing is NaN), and a missing modality
never passes for a present one made of zeros. Rows lacking both modalities
may return anything finite; the caller zeroes them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Periods of the sinusoidal time encoding: short enough to tell 100 ms audio
# tokens apart, long enough not to alias within windows of tens of seconds.
MIN_PERIOD_S = 0.05
MAX_PERIOD_S = 100.0


def time_encoding(t_s: torch.Tensor, dim: int) -> torch.Tensor:
    """[B, T] seconds -> [B, T, dim]: sin and cos at dim//2 geometrically spaced periods."""
    n_freq = dim // 2
    periods = torch.logspace(
        math.log10(MIN_PERIOD_S), math.log10(MAX_PERIOD_S), max(n_freq, 1), device=t_s.device
    )[:n_freq]
    angles = t_s.float().unsqueeze(-1) * (2.0 * math.pi / periods)
    encoding = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if encoding.shape[-1] < dim:  # odd dim: one constant-zero feature
        encoding = nn.functional.pad(encoding, (0, dim - encoding.shape[-1]))
    return encoding


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D] tokens, [B, T] bool mask -> [B, D] mean of the real tokens (zeros if none)."""
    kept = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    count = mask.sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)
    return kept.sum(dim=1) / count


def _rows_where(flags: torch.Tensor) -> torch.Tensor:
    """Indices of the True entries of a [B] bool tensor."""
    return flags.nonzero(as_tuple=False).squeeze(1)


class CrossAttentionFusion(nn.Module):
    """Video attends to audio and audio to video; pooled per modality, then combined.

    A window missing one modality skips the cross-attention (its tokens keep
    only their own residual path) and contributes a learned "missing"
    embedding in place of that modality's pooled vector.
    """

    def __init__(self, dim: int, heads: int, video_dim: int, audio_dim: int):
        super().__init__()
        self.dim = dim
        self.video_proj = nn.Linear(video_dim, dim)
        self.audio_proj = nn.Linear(audio_dim, dim)
        self.video_from_audio = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.audio_from_video = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.video_norm = nn.LayerNorm(dim)
        self.audio_norm = nn.LayerNorm(dim)
        self.missing = nn.Parameter(torch.randn(2, dim) * 0.02)  # [video, audio]
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, video, video_mask, video_t_s, audio, audio_mask, audio_t_s):
        v = self.video_proj(video) + time_encoding(video_t_s, self.dim)
        a = self.audio_proj(audio) + time_encoding(audio_t_s, self.dim)
        has_video, has_audio = video_mask.any(dim=1), audio_mask.any(dim=1)
        both = _rows_where(has_video & has_audio)
        v_context, a_context = torch.zeros_like(v), torch.zeros_like(a)
        attn = v.new_zeros(v.shape[0], v.shape[1], a.shape[1])
        if both.numel():
            vb, ab = v[both], a[both]
            v_out, weights = self.video_from_audio(vb, ab, ab, key_padding_mask=~audio_mask[both])
            a_out, _ = self.audio_from_video(ab, vb, vb, key_padding_mask=~video_mask[both], need_weights=False)
            v_context = v_context.index_copy(0, both, v_out.to(v.dtype))
            a_context = a_context.index_copy(0, both, a_out.to(a.dtype))
            # Padded video positions are not frames: report no attention for them.
            weights = weights.to(attn.dtype) * video_mask[both].unsqueeze(-1)
            attn = attn.index_copy(0, both, weights)
        v = self.video_norm(v + v_context)
        a = self.audio_norm(a + a_context)
        pooled_video = torch.where(has_video.unsqueeze(1), masked_mean(v, video_mask), self.missing[0].to(v.dtype))
        pooled_audio = torch.where(has_audio.unsqueeze(1), masked_mean(a, audio_mask), self.missing[1].to(a.dtype))
        return self.out(torch.cat([pooled_video, pooled_audio], dim=-1)), attn


class ConcatFusion(nn.Module):
    """Early fusion: one token sequence of both modalities through one transformer layer.

    Each token gets a learned modality embedding and the time encoding; a
    missing modality simply contributes no tokens (all masked).
    """

    def __init__(self, dim: int, heads: int, video_dim: int, audio_dim: int):
        super().__init__()
        self.dim = dim
        self.video_proj = nn.Linear(video_dim, dim)
        self.audio_proj = nn.Linear(audio_dim, dim)
        self.modality = nn.Parameter(torch.randn(2, dim) * 0.02)  # [video, audio]
        self.layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, batch_first=True)

    def forward(self, video, video_mask, video_t_s, audio, audio_mask, audio_t_s):
        v = self.video_proj(video) + self.modality[0] + time_encoding(video_t_s, self.dim)
        a = self.audio_proj(audio) + self.modality[1] + time_encoding(audio_t_s, self.dim)
        tokens = torch.cat([v, a.to(v.dtype)], dim=1)
        mask = torch.cat([video_mask, audio_mask], dim=1)
        embedding = tokens.new_zeros(tokens.shape[0], self.dim)
        rows = _rows_where(mask.any(dim=1))  # an all-masked row would be NaN in softmax
        if rows.numel():
            hidden = self.layer(tokens[rows], src_key_padding_mask=~mask[rows])
            embedding = embedding.index_copy(0, rows, masked_mean(hidden, mask[rows]).to(embedding.dtype))
        return embedding, None


class WeightedFusion(nn.Module):
    """Late fusion: pool each modality, project, and mix with gates softmaxed over present modalities."""

    def __init__(self, dim: int, heads: int, video_dim: int, audio_dim: int):
        super().__init__()
        del heads  # no attention here; accepted so all strategies share one constructor
        self.video_proj = nn.Linear(video_dim, dim)
        self.audio_proj = nn.Linear(audio_dim, dim)
        self.video_gate = nn.Linear(dim, 1)
        self.audio_gate = nn.Linear(dim, 1)

    def forward(self, video, video_mask, video_t_s, audio, audio_mask, audio_t_s):
        pooled_video = self.video_proj(masked_mean(video, video_mask))
        pooled_audio = self.audio_proj(masked_mean(audio, audio_mask)).to(pooled_video.dtype)
        logits = torch.cat([self.video_gate(pooled_video), self.audio_gate(pooled_audio)], dim=1).float()
        present = torch.stack([video_mask.any(dim=1), audio_mask.any(dim=1)], dim=1)
        # The floor gives an absent modality exactly zero weight; unlike -inf it keeps
        # the softmax finite when both are absent (the caller zeroes those rows).
        gates = torch.softmax(logits.masked_fill(~present, torch.finfo(logits.dtype).min), dim=1)
        gates = gates.to(pooled_video.dtype)
        return gates[:, :1] * pooled_video + gates[:, 1:] * pooled_audio, None


STRATEGIES: dict[str, type[nn.Module]] = {
    "cross_attention": CrossAttentionFusion,
    "concat": ConcatFusion,
    "weighted": WeightedFusion,
}
