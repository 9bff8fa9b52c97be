"""Batch functions of the shared operator stages, placed by Ray but runnable without it.

Each ``run_batch`` takes one item per request (usually one chunk of one stream),
concatenates them into a single forward pass, and splits the result back, so a
GPU sees one batch for many streams. Inputs arrive as numpy arrays that Ray has
mapped from its object store; ``torch.from_numpy`` shares them without copying.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from operators import (
    SignalFeatures,
    autocast_for,
    build_audio_encoder,
    build_fusion,
    collate_windows,
    resolve_device,
)
from operators.av_sync import lag_posterior, load_sync_head
from operators.checkpoint import CheckpointMismatchError
from operators.efficientnet_lite import ImageTagger
from operators.event_head import load_event_head
from operators.weights import sync_checkpoint_path
from operators.yamnet import EMBED_DIM as SOUND_EMBED_DIM
from pipeline.compute.operator_specs import AudioEncoderSpec, FusionSpec, VisionSpec, spec_of
from pipeline.compute.provenance import trained_behind
from pipeline.compute.speech_scoring import SpeechScoring
from pipeline.core.config import Config
from pipeline.core.media import AudioRows, EncodedAudio, EncodedVideo, VideoFrames
from pipeline.stream.fusion_io import FusedWindows, FusionRequest
from pipeline.stream.understanding import fuses_tagger_tokens

log = logging.getLogger("avfuse.stages")


def _split(array: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    return np.split(array, np.cumsum(lengths)[:-1])


def run_concatenated(inputs: list[np.ndarray], device: torch.device, forward) -> list[list[np.ndarray]]:
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
        from operators.vision import VisionEncoder  # torchvision (0.17 GiB): only in this operator's process

        self.device = resolve_device(cfg.runtime.device)
        encoder = VisionEncoder(spec_of(cfg.vision, VisionSpec), cfg.video.image_size)
        self.encoder = encoder.prepare_for_inference().to(self.device)
        self.signals = SignalFeatures().to(self.device)

    def _forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with autocast_for(self.device):
            tokens = self.encoder(frames)
        sig = self.signals.video(frames)
        return tokens, sig.luma_mean, sig.color_hist, sig.luma_thumb

    @torch.inference_mode()
    def run_batch(self, items: list[VideoFrames]) -> list[EncodedVideo]:
        shares = run_concatenated([item.frames_rgb_u8 for item in items], self.device, self._forward)
        return [EncodedVideo(item.pts_s, *share) for item, share in zip(items, shares)]


class AudioStage:
    SUBFRAME_S = 0.01  # SignalFeatures.audio measures loudness and bands per 10 ms

    def __init__(self, cfg: Config):
        self.device = resolve_device(cfg.runtime.device)
        self.sample_rate_hz = cfg.audio.sample_rate_hz
        row_samples = int(round(cfg.audio.sample_rate_hz * cfg.audio.token_s))
        encoder = build_audio_encoder(spec_of(cfg.audio_encoder, AudioEncoderSpec), self.sample_rate_hz, row_samples)
        self.encoder = encoder.to(self.device).eval()
        self.signals = SignalFeatures().to(self.device)
        # Streams in flight per replica are bounded by runtime.max_concurrent_streams; keep some slack.
        self.speech = SpeechScoring(cfg, 4 * cfg.runtime.max_concurrent_streams) if cfg.speech.enabled else None

    def _forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with autocast_for(self.device):
            tokens = self.encoder(rows)
        sig = self.signals.audio(rows, self.sample_rate_hz)
        return tokens, sig.rms_dbfs, sig.band_log_energy

    def forget(self, stream_id: str) -> None:
        """A stream ended: drop what the stage kept for it (its speech-activity state)."""
        if self.speech is not None:
            self.speech.forget(stream_id)

    @torch.inference_mode()
    def run_batch(self, items: list[AudioRows]) -> list[EncodedAudio]:
        shares = run_concatenated([item.samples_f32 for item in items], self.device, self._forward)
        return [EncodedAudio(item.start_s, *share, subframe_s=self.SUBFRAME_S,
                             speech=self.speech.score(item) if self.speech is not None else None)
                for item, share in zip(items, shares)]


def _load_sync(cfg: Config, video_dim: int, audio_dim: int, expected: dict):
    """The configured sync head; None when the shipped default does not fit the configured encoders.

    A checkpoint the user named must fit (else CheckpointMismatchError). The shipped one was
    trained behind the default encoders: choosing other encoders should not cost the pipeline,
    only the A/V offset, with one warning saying how to get it back.
    """
    path = sync_checkpoint_path(cfg.av_sync.checkpoint)
    try:
        head, _ = load_sync_head(path, video_dim, audio_dim, cfg.audio.token_s, expected)
    except CheckpointMismatchError as exc:
        if cfg.av_sync.checkpoint != "default":
            raise
        log.warning("A/V sync disabled: the shipped checkpoint was trained behind other encoders "
                    "(%s); train one for this config with `avfuse train sync`", str(exc).split(": ", 1)[-1])
        return None
    return head


class FusionStage:
    """Fuses windows, and runs the heads that read the same batch: A/V sync and learned events.

    One request (``FusionRequest``) is the windows one stream has ready; it gets one
    FusedWindows back. With the pretrained taggers, the cross-modal fusion reads their
    embeddings (EfficientNet-Lite0 frames attend to YAMNet patches, and back); the heads keep
    the encoder tokens they were trained behind.
    """

    def __init__(self, cfg: Config):
        self.device = resolve_device(cfg.runtime.device)
        video_dim, audio_dim = self.dims = cfg.vision.embed_dim, cfg.audio_encoder.embed_dim
        self.semantic = fuses_tagger_tokens(cfg)
        self.fusion_dims = (ImageTagger.EMBED_DIM, SOUND_EMBED_DIM) if self.semantic else self.dims
        self.fusion = build_fusion(spec_of(cfg.fusion, FusionSpec), *self.fusion_dims).to(self.device).eval()
        self.sync = self.event_head = None
        self.head_version = ""
        expected = trained_behind(cfg)
        if cfg.av_sync.enabled:
            self.sync = _load_sync(cfg, video_dim, audio_dim, expected)
            if self.sync is not None:
                self.sync.to(self.device)
        if cfg.event_head.checkpoint:
            self.event_head, extra = load_event_head(cfg.event_head.checkpoint, video_dim, audio_dim, expected)
            self.event_head.to(self.device)
            self.head_version = str(extra.get("version", "1"))

    @property
    def sync_lags_s(self) -> np.ndarray | None:
        return None if self.sync is None else self.sync.lags_s.cpu().numpy()

    @property
    def labels(self) -> list[str]:
        return [] if self.event_head is None else list(self.event_head.labels)

    @torch.inference_mode()
    def run_batch(self, items: list[FusionRequest]) -> list[FusedWindows]:
        lengths = [len(item) for item in items]
        windows = [w for item in items for w in item.windows]
        # Explicit widths: a batch of video-only windows still has (empty) audio of the right width.
        heads = self.sync is not None or self.event_head is not None
        batch = collate_windows(windows, self.device, *self.dims) if heads or not self.semantic else None
        fusion_batch = batch
        if self.semantic:
            fusion_batch = collate_windows([w for item in items for w in item.semantic], self.device,
                                           *self.fusion_dims)
        with autocast_for(self.device):
            embedding = self.fusion(fusion_batch).embedding.float().cpu().numpy()
            # The heads' attention logits are small differences of dot products: keep them in fp32.
            with torch.autocast(device_type=self.device.type, enabled=False):
                sync = self.sync(batch) if self.sync is not None else None
                labels = torch.sigmoid(self.event_head(batch)) if self.event_head is not None else None
        sync_probs = lag_posterior(sync.logits).cpu().numpy() if sync is not None else None
        sync_valid = sync.valid.cpu().numpy() if sync is not None else None
        label_probs = labels.float().cpu().numpy() if labels is not None else None
        bounds = np.cumsum([0, *lengths])

        def rows(array: np.ndarray | None, a: int, b: int) -> np.ndarray | None:
            return None if array is None else array[a:b]

        return [FusedWindows(embedding[a:b], rows(sync_probs, a, b), rows(sync_valid, a, b), self.sync_lags_s,
                             rows(label_probs, a, b), self.labels, self.head_version)
                for a, b in zip(bounds[:-1], bounds[1:])]
