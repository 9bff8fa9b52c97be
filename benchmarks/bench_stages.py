"""Operators without Ray: decode N streams in N processes, encode their chunks batched across
streams in one process, and compare with PyAV decode-only measured in the same run.

This is the path that checks the CUDA code (device: auto picks the GPU, bf16 autocast)
on machines where Ray is not installed. It prints:
  - decode-only aggregate fps for N streams (threads; PyAV releases the GIL);
  - decode + vision/audio encoding + per-stream sessions (alignment, detectors) + fusion,
    aggregate fps, and its ratio to decode-only;
  - the vision encoder alone on the chosen device at a large batch (frames/s).

Usage: python -m benchmarks.bench_stages [--streams 4] [--seconds 60] [--clip PATH] [--set k=v]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_media import decode_only, decode_only_parallel, write_bench_clip
from pipeline.compute.stages import AudioStage, FusionStage, VisionStage
from pipeline.core.config import load_config
from pipeline.ingest.decode import MediaDecoder
from pipeline.output.sinks import NullSink
from pipeline.stream.session import StreamSession


def _decode_into(stream_id: str, path: str, cfg, out) -> None:
    """One decoder process per stream, as Ray places one stream actor per stream."""
    decoder = MediaDecoder(stream_id, path, cfg)
    out.put((stream_id, decoder.open()))
    for chunk in decoder.chunks():
        out.put(chunk)
    out.put(None)


def run_in_process(path: str, streams: int, cfg) -> tuple[int, float]:
    """Frames decoded by all streams and the wall seconds taken, encoders batched across streams."""
    vision, audio, fusion = VisionStage(cfg), AudioStage(cfg), FusionStage(cfg)
    ctx = mp.get_context("spawn")
    chunks = ctx.Queue(maxsize=streams * cfg.decode.max_inflight_chunks)
    infos: dict = {}
    started = None  # from the first opened stream: process start-up is not throughput
    workers = [ctx.Process(target=_decode_into, args=(f"s{i}", path, cfg, chunks)) for i in range(streams)]
    for worker in workers:
        worker.start()
    sessions: dict[str, StreamSession] = {}
    frames, finished = 0, 0
    spent = dict.fromkeys(("wait", "vision", "audio", "sessions", "fusion"), 0.0)
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        spent[name] += now - mark
        mark = now

    while finished < streams:
        lap("sessions")
        batch = [chunks.get()]
        while len(batch) < streams:  # whatever else is ready: one forward for several streams
            try:
                batch.append(chunks.get_nowait())
            except queue.Empty:
                break
        finished += sum(c is None for c in batch)
        infos.update(c for c in batch if isinstance(c, tuple))
        if started is None and infos:
            started = time.perf_counter()
        batch = [c for c in batch if c is not None and not isinstance(c, tuple)]
        if not batch:
            continue
        lap("wait")
        with_video = [c for c in batch if c.video is not None]
        with_audio = [c for c in batch if c.audio is not None]
        encoded_video = dict(zip((id(c) for c in with_video), vision.run_batch([c.video for c in with_video]) if with_video else []))
        lap("vision")
        encoded_audio = dict(zip((id(c) for c in with_audio), audio.run_batch([c.audio for c in with_audio]) if with_audio else []))
        lap("audio")
        ready = []
        for chunk in batch:
            session = sessions.get(chunk.stream_id)
            if session is None:
                session = sessions[chunk.stream_id] = StreamSession(chunk.stream_id, path, cfg, infos[chunk.stream_id], NullSink())
            frames += chunk.frames_decoded
            windows = session.on_chunk(chunk, encoded_video.get(id(chunk)), encoded_audio.get(id(chunk)))
            if windows:
                ready.append((session, windows))
        if ready:
            lap("sessions")
            embeddings = fusion.run_batch([session.fusion_inputs(windows) for session, windows in ready])
            for (session, windows), emb in zip(ready, embeddings):
                session.on_fused(windows, emb)
            lap("fusion")
    for worker in workers:
        worker.join()
    for session in sessions.values():
        session.close("ok")
    print("main loop seconds: " + ", ".join(f"{name} {value:.2f}" for name, value in spent.items()))
    return frames, time.perf_counter() - started


def vision_alone(cfg, batch: int = 256, repeats: int = 20) -> float:
    stage = VisionStage(cfg)
    size = cfg.video.image_size
    frames = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).to(stage.device)
    from operators import autocast_for

    with torch.inference_mode(), autocast_for(stage.device):
        for _ in range(3):
            stage.encoder(frames)
        if stage.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            stage.encoder(frames)
        if stage.device.type == "cuda":
            torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clip", type=Path)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    # The in-process loop runs the encoders, not the taggers: compare it in the signal profile.
    cfg = load_config(None, ["profile=signal", *args.sets], environ={})
    # As in the Ray actors: few intra-op threads, so torch does not fight the decoders for cores.
    torch.set_num_threads(cfg.runtime.torch_threads)
    clip = args.clip or Path(tempfile.mkdtemp()) / "bench720p.mp4"
    if not clip.exists():
        write_bench_clip(clip, args.seconds)
    print(f"device: {VisionStage(cfg).device}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    frames_1, decode_s = decode_only(str(clip))
    decode_fps = decode_only_parallel(str(clip), args.streams)
    run_in_process(str(clip), 1, cfg)  # warm-up: first batches compile kernels and fill caches
    frames, wall_s = run_in_process(str(clip), args.streams, cfg)
    decode_fps = max(decode_fps, decode_only_parallel(str(clip), args.streams))
    fps = frames / wall_s
    print(f"decode-only: 1 stream {frames_1 / decode_s:.0f} fps; {args.streams} streams {decode_fps:.0f} fps aggregate")
    print(f"in-process pipeline, {args.streams} streams: {fps:.0f} fps aggregate (ratio {fps / decode_fps:.2f})")
    print(f"vision encoder alone at batch 256: {vision_alone(cfg):.0f} frames/s")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
