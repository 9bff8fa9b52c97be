"""AudioEncoder: fixed-length mono rows to one embedding per row.

One row is one audio token (``audio.token_s``, 100 ms by default), so the
encoder emits exactly one token per row and the token's time is the row's
start time. Front end: log-mel spectrogram; then a small conv1d stack over
time, mean-pooled, projected to ``embed_dim``.

``build_audio_encoder`` picks the configured encoder: this one
(``audio_encoder.kind: mel_conv``) or a pretrained torchaudio bundle
(``torchaudio_bundle``, operators/audio_bundle.py); both keep the contract below.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from operators.audio_bundle import BundleAudioEncoder
from operators.checkpoint import load_module_checkpoint, seeded_init
from operators.row_encoder import KIND, AudioEncoderSpec, RowEncoder

LOG_FLOOR = 1e-6  # keeps log(mel) finite on digital silence


class AudioEncoder(RowEncoder):
    """Audio rows to embeddings.

    Input:  ``rows`` float32 [K, R], mono, in [-1, 1], R == row_samples, sampled
            at ``sample_rate_hz`` (the caller checks the rows' rate; this module
            cannot), on the module's device.
    Output: float32 [K, embed_dim], one token per row, independent of the
            other rows in the batch.

    Weights: ``cfg.checkpoint`` (an avfuse checkpoint of kind 'audio_encoder')
    if set, else a deterministic random init, identical in every process.
    """

    def __init__(self, cfg: AudioEncoderSpec, sample_rate_hz: int, row_samples: int):
        super().__init__()
        if row_samples < cfg.n_fft // 2 + 1:
            # With reflect padding a row shorter than half a window has no valid frame.
            raise ValueError(f"row_samples={row_samples} is too short for n_fft={cfg.n_fft}")
        self.cfg = cfg
        self.sample_rate_hz = int(sample_rate_hz)
        self.row_samples = int(row_samples)
        hidden = cfg.embed_dim
        with seeded_init():
            self.mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=self.sample_rate_hz, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels
            )
            self.conv = nn.Sequential(
                nn.Conv1d(cfg.n_mels, hidden, kernel_size=3, padding=1),
                nn.GELU(),
                nn.Conv1d(hidden, hidden, kernel_size=3, padding=1),
                nn.GELU(),
            )
            self.proj = nn.Linear(hidden, cfg.embed_dim)
        if cfg.checkpoint:
            load_module_checkpoint(self, cfg.checkpoint, KIND)
        self.eval()

    @property
    def preprocessing(self) -> dict:
        return {
            "sample_rate_hz": self.sample_rate_hz,
            "row_samples": self.row_samples,
            "n_mels": self.cfg.n_mels,
            "n_fft": self.cfg.n_fft,
            "hop_length": self.cfg.hop_length,
        }

    def log_mel(self, rows: torch.Tensor) -> torch.Tensor:
        """float [K, R] -> float32 [K, n_mels, frames], log(mel power + 1e-6)."""
        # Power spectra overflow fp16 and lose the quiet end in bf16: keep the front end in fp32.
        with torch.autocast(device_type=rows.device.type, enabled=False):
            return torch.log(self.mel(rows.float()) + LOG_FLOOR)

    def tokens(self, rows: torch.Tensor) -> torch.Tensor:
        hidden = self.conv(self.log_mel(rows))  # [K, hidden, frames]
        return self.proj(hidden.mean(dim=2))


def build_audio_encoder(
    cfg: AudioEncoderSpec, sample_rate_hz: int, row_samples: int
) -> AudioEncoder | BundleAudioEncoder:
    """The audio encoder ``cfg.kind`` names, with its weights loaded, in eval mode on the CPU."""
    if cfg.kind == "torchaudio_bundle":
        return BundleAudioEncoder(cfg, sample_rate_hz, row_samples)
    return AudioEncoder(cfg, sample_rate_hz, row_samples)
