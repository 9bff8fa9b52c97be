"""YAMNet (AudioSet, 521 classes): waveform patches to embeddings and class scores.

Google's YAMNet is a MobileNetV1 over 96x64 log-mel patches (0.96 s of 16 kHz
mono audio). This module is the network *and* its front end, so the GPU and
the CPU run the same code and callers hand it raw samples:

    waveform [P, 15600] -> log-mel [P, 1, 96, 64] -> 14 conv blocks -> mean pool
        -> embedding [P, 1024] -> linear -> sigmoid -> scores [P, 521]

Front end (YAMNet's ``features.py``): 25 ms periodic-Hann frames every 10 ms,
|STFT| with a 512-point FFT, 64 HTK-mel bands over 125-7500 Hz, log(mel + 0.001).
Convolutions use TensorFlow's "same" padding (asymmetric when the stride is 2),
and BatchNorm is folded into each conv's bias, as in the exported ONNX file the
weights come from (operators/yamnet_weights.py).

``frame_patches`` cuts a contiguous waveform into the overlapping patches the
module takes (0.96 s every 0.48 s).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

SAMPLE_RATE_HZ = 16000
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
FFT_LENGTH = 512
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.001
PATCH_FRAMES = 96
PATCH_HOP_FRAMES = 48
PATCH_SAMPLES = WINDOW_SAMPLES + (PATCH_FRAMES - 1) * HOP_SAMPLES  # 15600: exactly the samples of 96 frames
PATCH_HOP_SAMPLES = PATCH_HOP_FRAMES * HOP_SAMPLES  # 7680 (0.48 s)
EMBED_DIM = 1024
NUM_CLASSES = 521

# (stride, output channels) of YAMNet's 14 blocks: one full 3x3 conv, then 13 depthwise-separable.
LAYERS = ((2, 32), (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
          (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))  # fmt: skip


def tf_mel_matrix(
    num_spectrogram_bins: int = FFT_LENGTH // 2 + 1,
    num_mel_bins: int = NUM_MEL_BINS,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    lower_hz: float = MEL_MIN_HZ,
    upper_hz: float = MEL_MAX_HZ,
) -> torch.Tensor:
    """float32 [num_spectrogram_bins, num_mel_bins], as ``tf.signal.linear_to_mel_weight_matrix``.

    YAMNet was trained on TF's matrix, whose triangles are linear in mel and
    whose DC bin is zero; torchaudio's HTK filterbank draws its triangles
    linearly in Hz, which moves every weight a little.
    """

    def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)

    bins_mel = hz_to_mel(np.linspace(0.0, sample_rate_hz / 2.0, num_spectrogram_bins)[1:])[:, None]
    edges_mel = np.linspace(hz_to_mel(lower_hz), hz_to_mel(upper_hz), num_mel_bins + 2)
    lower, center, upper = edges_mel[:-2], edges_mel[1:-1], edges_mel[2:]
    rising = (bins_mel - lower) / (center - lower)
    falling = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return torch.from_numpy(np.pad(weights, ((1, 0), (0, 0)))).float()


class YamnetLogMel(nn.Module):
    """float [P, N] waveform at 16 kHz -> float32 [P, 1, frames, 64] log-mel, frames = 1 + (N - 400) // 160.

    Always computed in fp32, also inside an autocast region: |STFT| sums lose
    the quiet bands in bf16 and can overflow fp16.
    """

    def __init__(self) -> None:
        super().__init__()
        # Constants, not weights: recomputed on construction, so kept out of the state_dict.
        self.register_buffer("window", torch.hann_window(WINDOW_SAMPLES, periodic=True), persistent=False)
        self.register_buffer("mel_matrix", tf_mel_matrix(), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # torch centres a short window inside the n_fft frame; padding (512 - 400) / 2 samples on
        # each side makes frame i cover samples [160 i, 160 i + 400), as tf.signal.stft does.
        # A zero-padded frame's |FFT| does not depend on where in the frame the samples sit.
        edge = (FFT_LENGTH - WINDOW_SAMPLES) // 2
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            magnitude = torchaudio.functional.spectrogram(
                F.pad(waveform.float(), (edge, edge)), pad=0, window=self.window, n_fft=FFT_LENGTH,
                hop_length=HOP_SAMPLES, win_length=WINDOW_SAMPLES, power=1.0, normalized=False, center=False,
            )  # [P, 257, frames]
            mel = torch.matmul(magnitude.transpose(1, 2), self.mel_matrix)  # [P, frames, 64]
            return torch.log(mel + LOG_OFFSET).unsqueeze(1)


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow's "same" padding: output size ceil(in / stride), extra row/column at the end."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class SeparableBlock(nn.Module):
    """Depthwise 3x3 conv + ReLU, then pointwise 1x1 conv + ReLU (BatchNorm folded into the biases)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.depthwise = Conv2dSame(in_channels, in_channels, 3, stride=stride, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pointwise(F.relu(self.depthwise(x))))


class FirstBlock(nn.Module):
    """Full 3x3 conv + ReLU on the 1-channel log-mel image."""

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = Conv2dSame(1, out_channels, 3, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class Yamnet(nn.Module):
    """YAMNet on raw 16 kHz waveform patches.

    ``forward(patches_f32) -> (embedding_f32, scores_f32)``

    Input:  float [P, PATCH_SAMPLES] (P >= 0), one 0.96 s patch of mono 16 kHz
            samples in [-1, 1] per row (``frame_patches`` cuts them), on the
            module's device. The rate cannot be checked here: the caller resamples.
    Output: embedding float32 [P, EMBED_DIM], the mean-pooled last conv layer;
            scores float32 [P, NUM_CLASSES], per-class sigmoid probabilities
            (multi-label: they do not sum to 1), in the order of the AudioSet
            class map (operators/audioset.py).
    Rows are independent of each other, so patches of many streams batch together.
    Safe under bf16/fp16 autocast: the front end stays in fp32, the convs
    follow the autocast dtype, and outputs are returned as float32.

    Construction gives random weights; ``operators.yamnet_weights.load_yamnet``
    builds one with the pretrained weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_mel = YamnetLogMel()
        blocks: list[nn.Module] = []
        in_channels = 1
        for i, (stride, out_channels) in enumerate(LAYERS):
            block = FirstBlock(out_channels, stride) if i == 0 else SeparableBlock(in_channels, out_channels, stride)
            blocks.append(block)
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(EMBED_DIM, NUM_CLASSES)
        self.eval()

    @property
    def preprocessing(self) -> dict:
        """The front end the weights expect; recorded with cached weights."""
        return {
            "sample_rate_hz": SAMPLE_RATE_HZ, "window_samples": WINDOW_SAMPLES, "hop_samples": HOP_SAMPLES,
            "fft_length": FFT_LENGTH, "num_mel_bins": NUM_MEL_BINS, "mel_min_hz": MEL_MIN_HZ,
            "mel_max_hz": MEL_MAX_HZ, "log_offset": LOG_OFFSET, "patch_frames": PATCH_FRAMES,
        }  # fmt: skip

    def forward(self, patches_f32: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if patches_f32.ndim != 2 or patches_f32.shape[1] != PATCH_SAMPLES:
            raise ValueError(f"Yamnet takes [P, {PATCH_SAMPLES}] waveform patches, got {list(patches_f32.shape)}")
        if patches_f32.shape[0] == 0:
            # Empty conv batches are not supported by every backend; the answer is known anyway.
            empty = patches_f32.new_zeros((0, EMBED_DIM), dtype=torch.float32)
            return empty, patches_f32.new_zeros((0, NUM_CLASSES), dtype=torch.float32)
        features = self.features(self.log_mel(patches_f32))  # [P, 1024, 3, 2]
        embedding = features.mean(dim=(2, 3))
        scores = torch.sigmoid(self.classifier(embedding))
        return embedding.float(), scores.float()


def frame_patches(samples_f32: np.ndarray, start_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Cut a contiguous 16 kHz mono waveform into YAMNet's overlapping patches.

    ``samples_f32``: float [N], its first sample at ``start_s`` seconds on the
    stream clock. Returns ``patches`` float32 [P, PATCH_SAMPLES] (a copy), patch
    i being samples [i * PATCH_HOP_SAMPLES, i * PATCH_HOP_SAMPLES + PATCH_SAMPLES),
    and ``patch_start_s`` float64 [P], each patch's first sample time;
    P = 0 when N < PATCH_SAMPLES, else 1 + (N - PATCH_SAMPLES) // PATCH_HOP_SAMPLES.
    A patch's centre, where its scores belong on the timeline, is
    ``patch_start_s + PATCH_SAMPLES / 2 / SAMPLE_RATE_HZ`` (0.4875 s in).
    A streaming caller keeps the samples from ``P * PATCH_HOP_SAMPLES`` on and
    prepends them to the next chunk, so consecutive calls continue the same grid.
    """
    samples = np.asarray(samples_f32, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"frame_patches takes a 1-D waveform, got shape {samples.shape}")
    count = 0 if samples.shape[0] < PATCH_SAMPLES else 1 + (samples.shape[0] - PATCH_SAMPLES) // PATCH_HOP_SAMPLES
    if count == 0:
        return np.zeros((0, PATCH_SAMPLES), np.float32), np.zeros(0, np.float64)
    windows = np.lib.stride_tricks.sliding_window_view(samples, PATCH_SAMPLES)[::PATCH_HOP_SAMPLES][:count]
    patch_start_s = start_s + np.arange(count, dtype=np.float64) * (PATCH_HOP_SAMPLES / SAMPLE_RATE_HZ)
    return np.ascontiguousarray(windows), patch_start_s
