"""The baseline avfuse's default profile is measured against: the single-process loop a user writes.

Same models at the same rates as ``profile: pretrained`` (the default), called through the
public ``operators`` in one Python process with no Ray, no queues and no stream logic:

  - PyAV demux + decode (thread_type AUTO), every video and audio frame;
  - video: 4 fps (``video.fps``) kept at 128x128 -> mobilenet_v3_small tokens + signal features;
    1 fps (``visual_tags.fps``) kept at 224x224 -> EfficientNet-Lite0 tags and embeddings;
  - audio: resampled to 16 kHz mono, 100 ms rows -> mel-conv tokens + signal features; silero
    speech activity per 32 ms; YAMNet on 0.96 s patches every 0.48 s;
  - every 1 s (``align.hop_s``), the 2 s window (``align.window_s``) ending there: cross-modal
    fusion of the taggers' embeddings and the A/V-sync head on the encoder tokens.

Work is batched per window hop (what accumulated in the last second), which is what a
sensible loop does; nothing is skipped that the pipeline computes. Whisper runs on speech
only: the benchmark clip has none (the pipeline's VAD finds none either), so neither runs it.

``naive_fps(path)`` returns decoded video frames per wall second; ``python -m
benchmarks.naive_loop CLIP`` prints it.
"""

from __future__ import annotations

import os
import sys
import time
from fractions import Fraction

import av
import numpy as np
import torch

from benchmarks.bench_media import decoded_frames
from operators import SignalFeatures, VisionEncoder, WindowInput, build_audio_encoder, build_fusion, collate_windows
from operators.av_sync import load_sync_head
from operators.efficientnet_lite import ImageTagger, load_image_tagger
from operators.fusion import FusionSpec
from operators.row_encoder import AudioEncoderSpec
from operators.speech import SpeechActivity
from operators.vision import VisionSpec
from operators.weights import sync_checkpoint_path
from operators.yamnet import EMBED_DIM as SOUND_EMBED_DIM
from operators.yamnet import PATCH_SAMPLES
from operators.yamnet_weights import load_yamnet

SAMPLE_RATE_HZ = 16000
ROW_SAMPLES = 1600  # 100 ms
PATCH_HOP_SAMPLES = PATCH_SAMPLES // 2  # every 0.48 s
VIDEO_FPS, TAG_FPS, VIDEO_SIZE = 4.0, 1.0, 128
WINDOW_S, HOP_S = 2.0, 1.0


class Models:
    """Every model of the default profile, loaded once, on the CPU."""

    def __init__(self):
        self.vision = VisionEncoder(VisionSpec(), VIDEO_SIZE).prepare_for_inference().eval()
        self.signals = SignalFeatures()
        self.audio = build_audio_encoder(AudioEncoderSpec(), SAMPLE_RATE_HZ, ROW_SAMPLES).eval()
        self.tagger = load_image_tagger()[0].prepare_for_inference().eval()
        self.yamnet = load_yamnet()[0].eval()
        self.fusion = build_fusion(FusionSpec(), ImageTagger.EMBED_DIM, SOUND_EMBED_DIM).eval()
        self.sync = load_sync_head(sync_checkpoint_path("default"), VisionSpec().embed_dim,
                                   AudioEncoderSpec().embed_dim, ROW_SAMPLES / SAMPLE_RATE_HZ)[0].eval()


class _Sampler:
    """Keeps the first frame at or after each 1/fps tick (by PTS)."""

    def __init__(self, fps: float):
        self.period_s, self.next_s = 1.0 / fps, 0.0

    def keep(self, t_s: float) -> bool:
        if t_s + 1e-6 < self.next_s:
            return False
        self.next_s = (int(t_s / self.period_s + 1e-6) + 1) * self.period_s
        return True


class _Pending:
    """What arrived since the last hop, and the tokens of the last window's worth."""

    def __init__(self):
        self.frames, self.frame_t = [], []
        self.tag_frames, self.tag_t = [], []
        self.arrived: list[np.ndarray] = []  # resampled audio since the last hop
        self.samples = np.zeros(0, np.float32)  # audio from absolute sample ``base`` on
        self.base = 0
        self.rows_done = 0  # absolute samples already cut into rows
        self.patches_done = 0  # absolute start of the next patch
        self.vad_done = 0
        self.video_tokens, self.tag_tokens, self.audio_tokens, self.sound_tokens = [], [], [], []


def _in_window(tokens: list[tuple[float, np.ndarray]], start_s: float, end_s: float):
    kept = [(t, v) for t, v in tokens if start_s <= t < end_s]
    if not kept:
        return None, None
    return np.stack([v for _, v in kept]).astype(np.float32), np.array([t for t, _ in kept], np.float64)


@torch.inference_mode()
def _run_hop(models: Models, state: _Pending, vad: SpeechActivity, end_s: float) -> None:
    if state.frames:
        frames = torch.from_numpy(np.stack(state.frames))
        tokens = models.vision(frames)
        models.signals.video(frames)
        state.video_tokens += list(zip(state.frame_t, tokens.numpy()))
        state.frames, state.frame_t = [], []
    if state.tag_frames:
        embedding, _scores = models.tagger(torch.from_numpy(np.stack(state.tag_frames)))
        state.tag_tokens += list(zip(state.tag_t, embedding.numpy()))
        state.tag_frames, state.tag_t = [], []
    samples = np.concatenate([state.samples, *state.arrived])
    state.arrived, base = [], state.base
    rows = (base + len(samples) - state.rows_done) // ROW_SAMPLES
    if rows:
        first = state.rows_done - base
        block = samples[first:first + rows * ROW_SAMPLES].reshape(rows, ROW_SAMPLES)
        tokens = models.audio(torch.from_numpy(block))
        models.signals.audio(torch.from_numpy(block), SAMPLE_RATE_HZ)
        starts = (state.rows_done + ROW_SAMPLES * np.arange(rows)) / SAMPLE_RATE_HZ
        state.audio_tokens += list(zip(starts.tolist(), tokens.numpy()))
        state.rows_done += rows * ROW_SAMPLES
    vad.feed(samples[state.vad_done - base:], state.vad_done / SAMPLE_RATE_HZ)
    state.vad_done = base + len(samples)
    starts = list(range(state.patches_done - base, len(samples) - PATCH_SAMPLES + 1, PATCH_HOP_SAMPLES))
    if starts:
        patches = np.stack([samples[s:s + PATCH_SAMPLES] for s in starts])
        embedding, _scores = models.yamnet(torch.from_numpy(patches))
        centres = [(base + s + PATCH_SAMPLES / 2) / SAMPLE_RATE_HZ for s in starts]
        state.sound_tokens += list(zip(centres, embedding.numpy()))
        state.patches_done = base + starts[-1] + PATCH_HOP_SAMPLES
    keep = min(state.rows_done, state.patches_done) - base  # what a later row or patch still reads
    state.samples, state.base = samples[keep:], base + keep
    start_s = max(0.0, end_s - WINDOW_S)
    semantic = WindowInput(start_s, *_in_window(state.tag_tokens, start_s, end_s),
                           *_in_window(state.sound_tokens, start_s, end_s))
    encoded = WindowInput(start_s, *_in_window(state.video_tokens, start_s, end_s),
                          *_in_window(state.audio_tokens, start_s, end_s))
    models.fusion(collate_windows([semantic], "cpu", ImageTagger.EMBED_DIM, SOUND_EMBED_DIM))
    models.sync(collate_windows([encoded], "cpu", VisionSpec().embed_dim, AudioEncoderSpec().embed_dim))
    keep_from = end_s - WINDOW_S
    for name in ("video_tokens", "tag_tokens", "audio_tokens", "sound_tokens"):
        setattr(state, name, [(t, v) for t, v in getattr(state, name) if t >= keep_from])


def naive_fps(path: str, models: Models | None = None) -> float:
    """Decoded video frames per wall second of the loop over one file (models loaded beforehand)."""
    models = models or Models()
    started = time.perf_counter()
    frames = 0
    state, vad = _Pending(), SpeechActivity(SAMPLE_RATE_HZ)
    # Importing silero_vad sets torch to 1 thread; the other models of the loop want every core.
    torch.set_num_threads(os.cpu_count() or 1)
    video_keep, tag_keep = _Sampler(VIDEO_FPS), _Sampler(TAG_FPS)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE_HZ)
    next_hop_s = HOP_S
    for frame in decoded_frames(path):
        t_s = float(frame.pts * Fraction(frame.time_base)) if frame.pts is not None else 0.0
        if isinstance(frame, av.VideoFrame):
            frames += 1
            if video_keep.keep(t_s):
                state.frames.append(frame.to_ndarray(width=VIDEO_SIZE, height=VIDEO_SIZE, format="rgb24"))
                state.frame_t.append(t_s)
            if tag_keep.keep(t_s):
                size = ImageTagger.TRAINED_SIZE
                state.tag_frames.append(frame.to_ndarray(width=size, height=size, format="rgb24"))
                state.tag_t.append(t_s)
            if t_s >= next_hop_s:
                _run_hop(models, state, vad, next_hop_s)
                next_hop_s += HOP_S
        else:
            for out in resampler.resample(frame):
                state.arrived.append(out.to_ndarray()[0])
    _run_hop(models, state, vad, next_hop_s)
    return frames / (time.perf_counter() - started)


def main() -> None:
    models = Models()
    naive_fps(sys.argv[1], models)  # first batches of each model are slow
    print(f"naive single-process loop: {naive_fps(sys.argv[1], models):.0f} fps")


if __name__ == "__main__":
    main()
