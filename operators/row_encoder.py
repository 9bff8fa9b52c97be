"""The contract every audio encoder shares (``AudioEncoder``, ``BundleAudioEncoder``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from operators.checkpoint import save_checkpoint
from operators.device import module_device, run_on_device
from operators.specs import AudioEncoderSpec

# Either encoder fills the pipeline's one audio-encoder slot; the recorded preprocessing tells them apart.
KIND = "audio_encoder"


class RowEncoder(nn.Module):
    """What every audio encoder shares: rows [K, row_samples] in, one token per row out.

    Subclasses set ``cfg``, ``sample_rate_hz``, ``row_samples``, provide ``preprocessing``
    and implement ``tokens(rows)`` for K >= 1 already-checked rows.
    """

    cfg: AudioEncoderSpec
    row_samples: int

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def tokens(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.ndim != 2 or rows.shape[1] != self.row_samples or not rows.is_floating_point():
            raise ValueError(
                f"{type(self).__name__} expects float rows [K, {self.row_samples}], got {rows.dtype} {list(rows.shape)}"
            )
        if rows.shape[0] == 0:
            return torch.zeros(0, self.embed_dim, device=rows.device)
        return self.tokens(rows).float()

    def encode(self, rows: np.ndarray) -> np.ndarray:
        """numpy float32 [K, R] -> numpy float32 [K, embed_dim], run on the module's device."""
        return run_on_device(self, rows, module_device(self))

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, KIND, self.state_dict(), self.preprocessing, extra={"embed_dim": self.embed_dim})
