"""Encoder operators alone: cost per media second and throughput at a fixed batch, no Ray, no decoding timed.

For each operator and torch thread count (1 and the machine's cores) it prints the
milliseconds per item (wall), the CPU milliseconds per media second (process CPU
time, so a multi-threaded run shows what it really burns), the throughput at the
batch size (images/s, or audio seconds/s), and two ratios to the pipeline's
default vision encoder (mobilenet_v3_small, 128 px, at video.fps) measured in the
same run, since shared machines drift between runs: 'x mnv3s' per media second,
'/image' per image. Medians of --repeats calls, taken round-robin over the
operators after one warm-up call each. Inputs are seeded random frames / audio:
the cost of these networks does not depend on the content. The face detector's
does (MTCNN's later stages run once per candidate box), so it reads real frames
of ../shared/media at faces.width, one row per clip (skipped without the clips).

    python -m benchmarks.bench_operators [--device cpu|cuda] [--batch 64] [--repeats 5] [--threads 1 2]

On CUDA (--device cuda): bf16 autocast as the pipeline runs it (the face detector
turns it off for itself: float32), batch 256 unless --batch is given, GPU wall time
in place of CPU time, no thread sweep.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from operators import VisionEncoder, build_audio_encoder
from operators.device import autocast_for, resolve_device
from operators.efficientnet_lite import load_image_tagger
from pipeline.compute.operator_specs import AudioEncoderSpec, VisionSpec, spec_of
from pipeline.core.config import Config

SHARED_MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
FACE_CLIPS = ("chaplin.mp4", "nasa_13013.mp4", "big_buck_bunny_0_30.webm")


@dataclass
class Operator:
    name: str
    module: nn.Module
    make_input: Callable[[int, torch.device], torch.Tensor]  # (batch, device) -> one batch
    media_s_per_item: float  # media seconds one item stands for at the given sampling rate
    rates: tuple[float, ...]  # items per media second to report (frame rates for video)
    unit: str  # "images" or "audio-s"


@dataclass
class Timing:
    wall_s: float  # median wall seconds per batch
    cpu_s: float  # median process CPU seconds per batch (GPU runs: equal to wall)


def frames_input(size: int) -> Callable[[int, torch.device], torch.Tensor]:
    def make(batch: int, device: torch.device) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=g).to(device)

    return make


def audio_input(samples: int) -> Callable[[int, torch.device], torch.Tensor]:
    def make(batch: int, device: torch.device) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return (0.1 * torch.randn(batch, samples, generator=g)).clamp_(-1, 1).to(device)

    return make


def clip_frames_input(clip: Path, fps: float, width: int) -> Callable[[int, torch.device], torch.Tensor]:
    """The clip's frames at ``fps`` by PTS, ``width`` wide, as the decoder samples faces; repeated to the batch."""
    import av
    import numpy as np

    from pipeline.ingest.decode import face_frame_size

    frames, last_slot = [], -1
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            slot = int(np.floor(frame.time * fps + 1e-6))
            if slot > last_slot:
                last_slot = slot
                size = face_frame_size(frame.width, frame.height, width)
                frames.append(frame.to_ndarray(width=size[0], height=size[1], format="rgb24", interpolation="AREA"))
    decoded = torch.from_numpy(np.stack(frames))

    def make(batch: int, device: torch.device) -> torch.Tensor:
        return decoded[torch.arange(batch) % len(decoded)].to(device)

    return make


def face_operators(cfg: Config, notes: list[str]) -> list[Operator]:
    """The MTCNN face detector on each clip of FACE_CLIPS that is there."""
    from operators.faces import load_face_detector

    try:
        detector, source = load_face_detector(cfg.faces.min_probability)
    except Exception as exc:  # a --no-deps install the venv may lack
        notes.append(f"FaceDetector skipped: {type(exc).__name__}: {exc}")
        return []
    notes.append(f"FaceDetector weights: {source}")
    ops = []
    for name in FACE_CLIPS:
        if not (SHARED_MEDIA / name).is_file():
            notes.append(f"FaceDetector on {name} skipped: no {SHARED_MEDIA / name}")
            continue
        make = clip_frames_input(SHARED_MEDIA / name, cfg.faces.fps, cfg.faces.width)
        height = make(1, torch.device("cpu")).shape[1]
        ops.append(Operator(f"FaceDetector mtcnn {cfg.faces.width}x{height} {name.split('.')[0][:10]}", detector,
                            make, 0.0, (cfg.faces.fps,), "images"))
    return ops


def build_operators(device: torch.device) -> tuple[list[Operator], list[str]]:
    """The operators to time, on ``device``, prepared as the pipeline prepares them; and skip notes."""
    cfg = Config()
    notes: list[str] = []
    ops: list[Operator] = []
    vision = VisionEncoder(spec_of(cfg.vision, VisionSpec), cfg.video.image_size).prepare_for_inference().to(device)
    ops.append(Operator(f"VisionEncoder {cfg.vision.backbone} {cfg.video.image_size}px", vision,
                        frames_input(cfg.video.image_size), 0.0, (cfg.video.fps,), "images"))
    tagger, source = load_image_tagger()
    tagger = tagger.prepare_for_inference().to(device)
    notes.append(f"ImageTagger weights: {source}")
    for size in (160, 224):
        ops.append(Operator(f"ImageTagger efficientnet-lite0 {size}px", tagger, frames_input(size), 0.0,
                            (1.0, 2.0), "images"))
    row_samples = int(round(cfg.audio.sample_rate_hz * cfg.audio.token_s))
    audio = build_audio_encoder(spec_of(cfg.audio_encoder, AudioEncoderSpec), cfg.audio.sample_rate_hz, row_samples).to(device).eval()
    ops.append(Operator(f"AudioEncoder {cfg.audio_encoder.kind} {cfg.audio.token_s:g}s rows", audio,
                        audio_input(row_samples), cfg.audio.token_s, (1.0 / cfg.audio.token_s,), "audio-s"))
    try:
        from operators.yamnet import PATCH_HOP_SAMPLES, PATCH_SAMPLES, SAMPLE_RATE_HZ
        from operators.yamnet_weights import load_yamnet
    except Exception as exc:  # another engineer's module: absent or half-written is not our failure
        notes.append(f"Yamnet skipped: operators.yamnet is not importable ({type(exc).__name__}: {exc})")
    else:
        try:
            yamnet, yamnet_source = load_yamnet()
            notes.append(f"Yamnet weights: {yamnet_source}")
        except Exception as exc:
            notes.append(f"Yamnet skipped: load_yamnet() failed ({type(exc).__name__}: {exc})")
        else:
            hop_s = PATCH_HOP_SAMPLES / SAMPLE_RATE_HZ
            ops.append(Operator(f"Yamnet {PATCH_SAMPLES}-sample patches", yamnet.to(device).eval(),
                                audio_input(PATCH_SAMPLES), hop_s, (1.0 / hop_s,), "audio-s"))
    for op in face_operators(cfg, notes):
        op.module.to(device)
        ops.append(op)
    return ops, notes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(ops: list[Operator], batch: int, device: torch.device, repeats: int) -> list[Timing]:
    """Median seconds per batch of each operator; repeats go round-robin over the operators,
    so a neighbour's load on a shared machine falls on all of them alike (the ratios hold)."""
    inputs = [op.make_input(batch, device) for op in ops]
    walls: list[list[float]] = [[] for _ in ops]
    cpus: list[list[float]] = [[] for _ in ops]
    with torch.inference_mode(), autocast_for(device):
        for op, x in zip(ops, inputs):
            op.module(x)  # warm-up: allocator, oneDNN primitives / CUDA kernels
        _sync(device)
        for _ in range(repeats):
            for i, (op, x) in enumerate(zip(ops, inputs)):
                wall0, cpu0 = time.perf_counter(), time.process_time()
                op.module(x)
                _sync(device)
                walls[i].append(time.perf_counter() - wall0)
                cpus[i].append(time.process_time() - cpu0)
    medians = [(statistics.median(w), statistics.median(c)) for w, c in zip(walls, cpus)]
    return [Timing(wall, wall if device.type == "cuda" else cpu) for wall, cpu in medians]


def report(ops: list[Operator], timings: list[Timing], batch: int, threads: str, device: torch.device) -> None:
    cost = "GPU ms/media-s" if device.type == "cuda" else "CPU ms/media-s"
    print(f"\n{device.type} threads={threads} batch={batch}")
    print(f"  {'operator':44s} {'rate':>9s} {'ms/item':>8s} {cost:>15s} {'throughput':>18s} {'x mnv3s':>8s} {'/image':>7s}")
    base = base_item = None
    for op, t in zip(ops, timings):
        per_item_cpu_ms = 1000.0 * t.cpu_s / batch
        base_item = per_item_cpu_ms if base_item is None else base_item
        for rate in op.rates:
            per_media_s = per_item_cpu_ms * rate
            base = per_media_s if base is None else base  # the first operator is the pipeline's VisionEncoder
            if op.unit == "images":
                rate_text, throughput = f"{rate:g} fps", f"{batch / t.wall_s:.1f} images/s"
                per_image = f"{per_item_cpu_ms / base_item:7.2f}"
            else:
                rate_text, throughput = f"{op.media_s_per_item:g} s", f"{batch * op.media_s_per_item / t.wall_s:.1f} audio-s/s"
                per_image = ""
            print(f"  {op.name:44s} {rate_text:>9s} {1000.0 * t.wall_s / batch:8.2f} {per_media_s:15.2f} "
                  f"{throughput:>18s} {per_media_s / base:8.2f} {per_image:>7s}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--batch", type=int, default=None, help="items per call (default 64 on CPU, 256 on CUDA)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="*", default=None,
                        help="torch thread counts on CPU (default: 1 and the machine's cores)")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    batch = args.batch or (256 if device.type == "cuda" else 64)
    ops, notes = build_operators(device)
    for note in notes:
        print(note)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, autocast {autocast_for(device).fast_dtype}")
        report(ops, measure(ops, batch, device, args.repeats), batch, "-", device)
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for threads in dict.fromkeys(args.threads or [1, cores]):
        torch.set_num_threads(threads)
        report(ops, measure(ops, batch, device, args.repeats), batch, str(threads), device)


if __name__ == "__main__":
    main()
