"""Encoder tokens of a whole local clip, computed in process and cached on disk (for training).

Training keeps the encoders frozen, so a clip's tokens are computed once with the
pipeline's own decoder and stages (no Ray) and reused by every epoch and every run.

Audio tokens are cut on ten row phases (0, 10, ... 90 ms for 100 ms rows): the A/V-sync
trainer shifts audio by any multiple of 10 ms by choosing a phase and a whole number of
rows, instead of re-encoding audio for every offset it tries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.compute.provenance import encoder_preprocessing
from pipeline.compute.stages import AudioStage, VisionStage
from pipeline.core.config import Config
from pipeline.core.media import AudioRows
from pipeline.ingest.decode import MediaDecoder

log = logging.getLogger("avfuse.train")

PHASE_STEP_S = 0.01  # audio shifts are multiples of this
CACHE_VERSION = 1


@dataclass
class ClipTokens:
    """One clip's frozen-encoder output, all times in seconds on the clip's stream clock.

    video_tokens [Nv, Dv] float32 at video_t_s [Nv]; audio_tokens [P, Na, Da] float32 where
    phase p's row k starts at audio_t0_s + p * PHASE_STEP_S + k * token_s (phase 0 are the
    pipeline's own rows). Either modality may have zero rows.
    """

    path: str
    video_tokens: np.ndarray
    video_t_s: np.ndarray
    audio_tokens: np.ndarray
    audio_t0_s: float
    token_s: float

    @property
    def has_video(self) -> bool:
        return len(self.video_t_s) > 0

    @property
    def has_audio(self) -> bool:
        return self.audio_tokens.shape[1] > 0

    @property
    def phases(self) -> int:
        return int(self.audio_tokens.shape[0])

    def audio_t_s(self, phase: int = 0) -> np.ndarray:
        count = self.audio_tokens.shape[1]
        return self.audio_t0_s + phase * PHASE_STEP_S + np.arange(count) * self.token_s

    def duration_s(self) -> float:
        ends = [0.0]
        if self.has_video:
            ends.append(float(self.video_t_s[-1]))
        if self.has_audio:
            ends.append(float(self.audio_t_s()[-1]) + self.token_s)
        return max(ends)


def _cache_key(path: Path, cfg: Config, phases: int) -> str:
    stat = path.stat()
    identity = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "phases": phases, "version": CACHE_VERSION, "encoders": encoder_preprocessing(cfg)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    return Path(os.environ.get("AVFUSE_CACHE_DIR", Path.home() / ".cache" / "avfuse")) / "tokens"


class ClipEncoder:
    """Decodes and encodes local clips with the pipeline's decoder and stages, on ``runtime.device``."""

    def __init__(self, cfg: Config, cache_dir: str | Path | None = None):
        self.cfg = cfg
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._vision: VisionStage | None = None
        self._audio: AudioStage | None = None

    def tokens(self, path: str | Path, phases: int = 1) -> ClipTokens:
        """The clip's tokens, from the cache when an entry for this file and config exists."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"clip not found: {path}")
        cached = self.cache_dir / f"{_cache_key(path, self.cfg, phases)}.npz"
        if cached.is_file():
            with np.load(cached) as data:
                return ClipTokens(str(path), data["video_tokens"], data["video_t_s"], data["audio_tokens"],
                                  float(data["audio_t0_s"]), float(data["token_s"]))
        clip = self._encode(path, phases)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".tmp.npz")
        np.savez(partial, video_tokens=clip.video_tokens, video_t_s=clip.video_t_s,
                 audio_tokens=clip.audio_tokens, audio_t0_s=clip.audio_t0_s, token_s=clip.token_s)
        os.replace(partial, cached)  # readers never see half a file
        return clip

    def _stages(self) -> tuple[VisionStage, AudioStage]:
        if self._vision is None:
            # Speech activity is not a token: leave it out of the audio stage here.
            no_speech = self.cfg.model_copy(update={"speech": self.cfg.speech.model_copy(update={"enabled": False})})
            self._vision, self._audio = VisionStage(self.cfg), AudioStage(no_speech)
        return self._vision, self._audio

    def _encode(self, path: Path, phases: int) -> ClipTokens:
        vision, audio = self._stages()
        decoder = MediaDecoder(path.name, str(path), self.cfg)
        decoder.open()
        video_parts, video_t, wave_parts, row_starts = [], [], [], []
        try:
            for chunk in decoder.chunks():
                if chunk.video is not None and len(chunk.video):
                    video_parts.append(vision.run_batch([chunk.video])[0].tokens_f32)
                    video_t.append(chunk.video.pts_s)
                if chunk.audio is not None and len(chunk.audio):
                    wave_parts.append(chunk.audio.samples_f32)
                    row_starts.append(chunk.audio.start_s)
        finally:
            decoder.close()
        dv, da = self.cfg.vision.embed_dim, self.cfg.audio_encoder.embed_dim
        video_tokens = np.concatenate(video_parts) if video_parts else np.zeros((0, dv), np.float32)
        video_t_s = np.concatenate(video_t) if video_t else np.zeros(0)
        audio_tokens, audio_t0_s = np.zeros((phases, 0, da), np.float32), 0.0
        if wave_parts:
            starts = np.concatenate(row_starts)
            wave = _waveform(np.concatenate(wave_parts), starts, self.cfg.audio.sample_rate_hz)
            audio_t0_s = float(starts[0])
            audio_tokens = self._phase_tokens(audio, wave, phases)
        log.info("encoded %s: %d frames, %d audio rows", path.name, len(video_t_s), audio_tokens.shape[1])
        return ClipTokens(str(path), video_tokens, video_t_s, audio_tokens, audio_t0_s, self.cfg.audio.token_s)

    def _phase_tokens(self, audio: AudioStage, wave: np.ndarray, phases: int) -> np.ndarray:
        rate = self.cfg.audio.sample_rate_hz
        row = int(round(rate * self.cfg.audio.token_s))
        step = int(round(rate * PHASE_STEP_S))
        count = (len(wave) - (phases - 1) * step) // row  # every phase gets the same number of rows
        out = []
        for phase in range(phases):
            rows = wave[phase * step: phase * step + count * row].reshape(count, row)
            start_s = phase * PHASE_STEP_S + np.arange(count) * self.cfg.audio.token_s
            out.append(audio.run_batch([AudioRows(np.ascontiguousarray(rows), start_s, rate)])[0].tokens_f32)
        return np.stack(out)


def _waveform(rows: np.ndarray, starts: np.ndarray, rate: int) -> np.ndarray:
    """Rows [K, R] timed by ``starts`` laid out on one sample grid from starts[0]; gaps hold zeros."""
    row = rows.shape[1]
    offsets = np.round((starts - starts[0]) * rate).astype(np.int64)
    wave = np.zeros(int(offsets[-1]) + row, np.float32)
    for offset, samples in zip(offsets, rows):
        wave[offset: offset + row] = samples
    return wave
