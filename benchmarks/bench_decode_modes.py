"""Decode only what is needed: PyAV decode modes for the 4 fps video sampler, measured.

Two 60 s 1280x720 25 fps H.264 clips:
  - ip: the replay benchmark's own clip (benchmarks.bench_media.write_bench_clip, imported):
    x264 veryfast, gop 50. Its film grain makes x264's adaptive B-frame decision pick none,
    so it is I/P only (the frame-type counts printed below show it);
  - b:  a panning texture with a moving block and light sensor noise, x264 defaults
    (preset medium, bf 3, b-pyramid), crf 23, gop 50: about 70% B-frames, like most files;
    hard cuts at 1/3 and 2/3 of the clip (20 s and 40 s).

For each clip, in the same run, best of ``--reps`` (wall time by ``time.perf_counter``,
process CPU time by ``time.process_time``, which counts FFmpeg's decoder threads too):
  a   full decode, thread_type AUTO, thread_count 0 (as pipeline/ingest/decode.py): baseline
  b   a + the kept frames (4 fps by PTS) to 128x128 RGB as decode.py does it today:
      ``frame.to_ndarray(width=, height=, format="rgb24", interpolation="AREA")``
  c   a + the same conversion through one reused ``av.video.reformatter.VideoReformatter``
  d   ``codec_context.skip_frame = "NONREF"`` (frames no other frame references are not decoded)
  d+c d with c's conversion
  t   targeted NONREF: ``skip_frame`` set per packet, "DEFAULT" for the packet of each frame the
      sampler will keep (the first less than a frame period after a tick), "NONREF" for the rest
  t+c t with c's conversion
  e   ``codec_context.options = {"skip_loop_filter": "all"}`` (no deblocking: "fast")
  e+c e with c's conversion (its kept frames give the PSNR against c's)
  all t + e + c
  a1, d1, t1, all1: a, d, t, all with one decoder thread (thread_type NONE)
then: whether NONREF is honoured under frame threading (set before the first decode, set
after it, given as an AVOption, thread_type FRAME / SLICE), against the count of
non-reference frames read from the bitstream; how the kept-frame times move under NONREF
(a PTS sampler keeps the first decoded frame at or after each 1/fps tick); full-resolution
luma and chroma PSNR of fast mode; with ``--media``, the same checks (one run each) on other
files, any codec; and a per-frame micro-benchmark of the conversion (fresh scaler per
frame vs one reused scaler, threads auto vs 1).

Usage: python -m benchmarks.bench_decode_modes [--seconds 60] [--reps 2] [--keep-clip DIR]
                                               [--ip-clip PATH] [--b-clip PATH] [--media FILE ...]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

WIDTH, HEIGHT, FPS = 1280, 720, 25  # as benchmarks.bench_media
KEEP_FPS, KEEP_SIZE = 4.0, 128  # video.fps and video.image_size defaults
TAG_FPS = 1.0  # visual_tags.fps default
SAMPLER_RATES = (1.0, 4.0, 8.0, 12.5)  # NONREF time shifts are reported at these sampling rates


# -- clips ------------------------------------------------------------------------------

def write_ip_clip(path: Path, seconds: float) -> Path:
    """The replay benchmark's clip (its code, imported): x264 veryfast, gop 50, with AAC audio."""
    from benchmarks.bench_media import write_bench_clip

    return write_bench_clip(path, seconds)


def cut_times(seconds: float) -> list[float]:
    """The B-frame clip's hard cuts: at 1/3 and 2/3 of it, on frame boundaries."""
    return [round(seconds * k / 3 * FPS) / FPS for k in (1, 2)]


def _texture(seed: int) -> np.ndarray:
    """A scene: waves and fixed grain on a canvas larger than the frame (the camera pans over it)."""
    rng = np.random.default_rng(seed)
    h, w = HEIGHT + 400, WIDTH + 800
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    f = rng.uniform(15, 90, 5).astype(np.float32)
    base = rng.uniform(60, 190, 3).astype(np.float32)
    image = np.empty((h, w, 3), np.float32)
    image[..., 0] = base[0] + 60 * np.sin(x / f[0]) * np.cos(y / f[1])
    image[..., 1] = base[1] + 50 * np.sin((x + y) / f[2])
    image[..., 2] = base[2] + 60 * np.cos(y / f[3] + x / f[4])
    image += rng.normal(0, 8, (h, w, 1)).astype(np.float32)
    return image


def write_bframe_clip(path: Path, seconds: float) -> Path:
    """Panning texture, a moving block, light sensor noise; x264 defaults (B-frames), gop 50."""
    cuts = [round(t * FPS) for t in cut_times(seconds)]
    rng = np.random.default_rng(7)
    noise = [rng.normal(0, 3, (HEIGHT, WIDTH, 1)).astype(np.float32) for _ in range(8)]
    # (pan px/frame, vertical sway px, block colour, block px/frame) per scene
    motion = [(3, 150, (240, 240, 40), 9), (-4, 60, (30, 60, 230), -7), (2, 180, (250, 250, 250), 12)]
    scene, texture = -1, None
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.options = {"crf": "23", "g": "50"}  # preset medium, bf 3, b-pyramid normal
        # x264's own frame threads: one slice per frame, as in most files. (PyAV's default for
        # encoders, slice threads, makes as many slices per frame as the writing machine has
        # cores: the ip clip has them, which flatters thread_type SLICE.)
        video.codec_context.thread_type = "FRAME"
        for i in range(int(seconds * FPS)):
            s = sum(i >= c for c in cuts)
            if s != scene:
                scene, texture, start = s, _texture(100 + s), i
            pan, sway, colour, speed = motion[scene % len(motion)]
            j = i - start
            x0 = (400 + pan * j) % 1600  # to and fro over the canvas: no jump but the cuts
            x0 = x0 if x0 < 800 else 1600 - x0
            y0 = int(200 + sway * np.sin(j / 40))
            image = texture[y0 : y0 + HEIGHT, x0 : x0 + WIDTH] + noise[i % len(noise)]
            bx = (WIDTH // 2 + speed * j) % (WIDTH - 120)
            image[300:420, bx : bx + 120] = colour
            frame = av.VideoFrame.from_ndarray(np.clip(image, 0, 255).astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    return path


@dataclass
class ClipInfo:
    frames: int
    types: dict[str, int]
    nonref: int  # frames whose slices have nal_ref_idc 0 (what NONREF may skip)
    mbit_s: float
    slices_per_frame: float


def clip_info(path: Path) -> ClipInfo:
    """Frame types (from a decode) and non-reference frames (from the bitstream: nal_ref_idc)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        extradata = stream.codec_context.extradata or b""
        length_size = (extradata[4] & 3) + 1 if extradata[:1] == b"\x01" else 4
        nonref = frames = slices = 0
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            data, pos, first = bytes(packet), 0, True
            while pos + length_size <= len(data):
                n = int.from_bytes(data[pos : pos + length_size], "big")
                header = data[pos + length_size]
                pos += length_size + n
                if header & 0x1F in (1, 5):  # a coded slice (non-IDR, IDR)
                    slices += 1
                    if first:
                        frames, first = frames + 1, False
                        nonref += (header >> 5) & 3 == 0
        duration_s = float(stream.duration * stream.time_base) if stream.duration else frames / FPS
    types: dict[str, int] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            name = av.video.frame.PictureType(frame.pict_type).name
            types[name] = types.get(name, 0) + 1
    return ClipInfo(frames, types, nonref, path.stat().st_size * 8 / 1e6 / duration_s, slices / max(frames, 1))


# -- decoding ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Mode:
    key: str
    label: str
    skip_frame: str | None = None  # CodecContext.skip_frame
    skip_frame_via: str = "attribute"  # attribute (before the first decode) | after_first_frame | option
    # | per_packet: NONREF for every packet but those of the frames the sampler will keep
    skip_loop_filter: str | None = None  # the AVCodecContext AVOption, via codec_context.options
    thread_type: str = "AUTO"
    convert: str | None = None  # None | "fresh" (decode.py today) | "reused"


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    times: list[float]  # PTS seconds of every decoded frame
    kept: list[tuple[float, np.ndarray]] = field(default_factory=list)
    leftover_options: dict = field(default_factory=dict)  # options avcodec_open2 did not take
    skip_frame_after: str = ""
    thread_type_after: str = ""

    @property
    def decoded(self) -> int:
        return len(self.times)


def configure(container, mode: Mode):
    """The video stream, set up as decode.py does (thread_type AUTO, thread_count 0) plus ``mode``."""
    stream = container.streams.video[0]
    cc = stream.codec_context
    stream.thread_type = mode.thread_type
    cc.thread_count = 1 if mode.thread_type == "NONE" else 0
    options = {}
    if mode.skip_loop_filter:
        options["skip_loop_filter"] = mode.skip_loop_filter.lower()
    if mode.skip_frame and mode.skip_frame_via == "option":
        options["skip_frame"] = {"NONREF": "noref"}.get(mode.skip_frame, mode.skip_frame.lower())
    if options:
        cc.options = options  # AVOptions: applied by avcodec_open2 at the first decode
    if mode.skip_frame and mode.skip_frame_via == "attribute":
        cc.skip_frame = mode.skip_frame
    return stream


class SampledPackets:
    """Which packets hold a frame a PTS sampler will keep: on a constant-rate source, the first
    frame at or after each tick is the one less than a frame period after it."""

    def __init__(self, rates: tuple[float, ...], source_fps: float, origin_s: float):
        self.rates, self.period_s, self.origin_s = rates, 1 / source_fps, origin_s

    def sampled(self, packet) -> bool:
        if packet.pts is None:
            return True
        t_s = float(packet.pts * packet.time_base) - self.origin_s
        return any(t_s - math.floor(t_s * r + 1e-6) / r < self.period_s - 1e-6 for r in self.rates)


def decode(path: Path, mode: Mode, fps: float = KEEP_FPS, size: int = KEEP_SIZE) -> Run:
    started, cpu_started = time.perf_counter(), time.process_time()
    times: list[float] = []
    kept: list[tuple[float, np.ndarray]] = []
    with av.open(str(path)) as container:
        stream = configure(container, mode)
        cc = stream.codec_context
        origin_s = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        reformatter = VideoReformatter() if mode.convert == "reused" else None
        late_skip = mode.skip_frame if mode.skip_frame_via == "after_first_frame" else None
        rate = stream.average_rate or stream.guessed_rate
        targeted = SampledPackets((fps,), float(rate), origin_s) if mode.skip_frame_via == "per_packet" else None
        current = None
        last_slot = -1
        for packet in container.demux(stream):
            if targeted is not None:
                want = "DEFAULT" if targeted.sampled(packet) else mode.skip_frame
                if want != current:  # frame threads copy skip_frame from this context with each packet
                    cc.skip_frame = current = want
            for frame in packet.decode():
                if frame.pts is None:
                    continue
                if late_skip:  # the codec is open and its frame threads run by now
                    cc.skip_frame, late_skip = late_skip, None
                t_s = float(frame.pts * frame.time_base) - origin_s
                times.append(t_s)
                if mode.convert is None:
                    continue
                slot = math.floor(t_s * fps + 1e-6)  # decode.py's sampler
                if slot > last_slot:
                    last_slot = slot
                    if reformatter is None:
                        image = frame.to_ndarray(width=size, height=size, format="rgb24", interpolation="AREA")
                    else:
                        image = reformatter.reformat(frame, width=size, height=size, format="rgb24",
                                                     interpolation="AREA").to_ndarray()
                    kept.append((t_s, image))
        run = Run(time.perf_counter() - started, time.process_time() - cpu_started, times, kept,
                  dict(cc.options or {}), cc.skip_frame, cc.thread_type.name)
    return run


def best_of(path: Path, modes: list[Mode], reps: int) -> dict[str, Run]:
    """Each mode ``reps`` times, round-robin (a busy moment then hits every mode alike); the
    best wall time and, separately, the best CPU time of each."""
    best: dict[str, Run] = {}
    for _ in range(reps):
        for mode in modes:
            run = decode(path, mode)
            if mode.key not in best:
                best[mode.key] = run
            else:
                kept = best[mode.key]
                kept.wall_s, kept.cpu_s = min(kept.wall_s, run.wall_s), min(kept.cpu_s, run.cpu_s)
    return best


# -- analysis ---------------------------------------------------------------------------

def sample(times: list[float], fps: float) -> dict[int, float]:
    """slot -> the PTS the sampler keeps: the first frame at or after each 1/fps tick."""
    kept, last = {}, -1
    for t in times:
        slot = math.floor(t * fps + 1e-6)
        if slot > last:
            kept[slot], last = t, slot
    return kept


def shifts(full: list[float], other: list[float], fps: float) -> dict:
    a, b = sample(full, fps), sample(other, fps)
    common = sorted(set(a) & set(b))
    d = np.array([b[s] - a[s] for s in common]) if common else np.zeros(0)
    return {"fps": fps, "slots": len(a), "missing": len(set(a) - set(b)), "extra": len(set(b) - set(a)),
            "changed": int(np.sum(d > 1e-6)), "max_s": float(d.max()) if d.size else 0.0,
            "mean_s": float(d[d > 1e-6].mean()) if np.any(d > 1e-6) else 0.0,
            "max_gap_s": float(np.max(np.diff(other))) if len(other) > 1 else 0.0}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.int32) - b.astype(np.int32)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def psnr_summary(values: list[float]) -> str:
    if not values:
        return "-"
    finite = [v for v in values if math.isfinite(v)]
    exact = len(values) - len(finite)
    if not finite:
        return f"bit-exact {exact}/{len(values)}"
    text = f"mean {np.mean(finite):.1f} dB, min {min(finite):.1f} dB"
    return text + (f", {exact}/{len(values)} bit-exact" if exact else "")


def kept_psnr(reference: Run, other: Run) -> tuple[list[float], list[float]]:
    """Per-slot PSNR of ``other``'s kept 128 px frames against ``reference``'s, split into the
    slots that kept the same PTS and the ones whose PTS moved."""
    ref = {math.floor(t * KEEP_FPS + 1e-6): (t, img) for t, img in reference.kept}
    same, moved = [], []
    for t, img in other.kept:
        slot = math.floor(t * KEEP_FPS + 1e-6)
        if slot in ref:
            (same if abs(ref[slot][0] - t) < 1e-6 else moved).append(psnr(ref[slot][1], img))
    return same, moved


def plane(frame, index: int) -> np.ndarray:
    p = frame.planes[index]  # line_size may pad the rows: the visible width only
    return np.frombuffer(p, np.uint8).reshape(p.height, -1)[:, : p.width]


def psnr_lockstep(path: Path, mode: Mode) -> tuple[list[float], list[float]]:
    """Full-resolution luma and chroma PSNR of every frame ``mode`` decodes against a full
    decode (the same frames: for modes that skip none)."""
    luma, chroma = [], []
    with av.open(str(path)) as full, av.open(str(path)) as other:
        frames_a = full.decode(configure(full, Mode("a", "")))
        frames_b = other.decode(configure(other, mode))
        for fa, fb in zip(frames_a, frames_b):
            assert fa.pts == fb.pts, (fa.pts, fb.pts)
            luma.append(psnr(plane(fa, 0), plane(fb, 0)))
            chroma.append(psnr(np.stack([plane(fa, 1), plane(fa, 2)]), np.stack([plane(fb, 1), plane(fb, 2)])))
    return luma, chroma


def conversion_microbench(path: Path, n: int = 50, reps: int = 2) -> list[tuple[str, str, float]]:
    """ms per frame to convert ``n`` decoded frames: a fresh scaler per frame vs one reused."""
    with av.open(str(path)) as container:
        stream = configure(container, Mode("a", ""))
        frames = []
        for frame in container.decode(stream):
            frames.append(frame)
            if len(frames) == n:
                break
    rows = []
    for width, height, what in ((128, 128, "kept 128x128"), (160, 160, "tags 160x160"), (640, 360, "faces 640x360")):
        args = dict(width=width, height=height, format="rgb24", interpolation="AREA")
        for label, threads in (("fresh per frame (decode.py)", None), ("fresh per frame, threads=1", 1),
                               ("one reused VideoReformatter", None), ("reused, threads=1", 1)):
            extra = {} if threads is None else {"threads": threads}
            best = math.inf
            for _ in range(reps):
                reformatter = VideoReformatter() if label.startswith(("one reused", "reused")) else None
                started = time.perf_counter()
                for frame in frames:
                    if reformatter is None:  # what frame.to_ndarray does: a new VideoReformatter on each new frame
                        VideoReformatter().reformat(frame, **args, **extra).to_ndarray()
                    else:
                        reformatter.reformat(frame, **args, **extra).to_ndarray()
                best = min(best, (time.perf_counter() - started) / len(frames) * 1e3)
            rows.append((what, label, best))
    return rows


def survey(paths: list[Path]) -> None:
    """Other files (any codec): one run each of full / NONREF / fast, CPU time, and the 4 fps samples."""
    print(f"\n=== other files: one run each (CPU s), {KEEP_FPS:g} fps samples of NONREF vs full decode")
    print(f"{'':<30} {'':<9} {'':>6} {'frames decoded':^20}  {'CPU s':^28}  4 fps samples vs full decode")
    print(f"{'file':<30} {'codec':<9} {'fps':>6} {'full':>6} {'NONREF':>6} {'target':>6}  {'full':>6} {'NONREF':>6} "
          f"{'target':>6} {'fast':>6}  NONREF: lost / max shift / max gap; targeted: lost / max shift")
    for path in paths:
        try:
            full, nonref, targeted, fast = (decode(path, m) for m in (FULL, NONREF, TARGETED, FAST))
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                codec, rate = stream.codec_context.name, stream.average_rate or stream.guessed_rate
        except (av.error.FFmpegError, IndexError, ValueError) as exc:
            print(f"{path.name:<30} cannot decode: {exc}")
            continue
        s, st = shifts(full.times, nonref.times, KEEP_FPS), shifts(full.times, targeted.times, KEEP_FPS)
        print(f"{path.name[:30]:<30} {codec:<9} {float(rate or 0):>6.2f} {full.decoded:>6} {nonref.decoded:>6} "
              f"{targeted.decoded:>6}  {full.cpu_s:>6.2f} {nonref.cpu_s:>6.2f} {targeted.cpu_s:>6.2f} {fast.cpu_s:>6.2f}  "
              f"{s['missing']} / {s['max_s'] * 1e3:.0f} ms / {s['max_gap_s'] * 1e3:.0f} ms; "
              f"{st['missing']} / {st['max_s'] * 1e3:.0f} ms"
              f"{'  fast: options not taken ' + str(fast.leftover_options) if fast.leftover_options else ''}")


# -- report -----------------------------------------------------------------------------

MODES = [
    Mode("a", "full decode (baseline)"),
    Mode("b", "a + kept->128px, fresh scaler/frame (today)", convert="fresh"),
    Mode("c", "a + kept->128px, reused VideoReformatter", convert="reused"),
    Mode("d", "skip_frame=NONREF", skip_frame="NONREF"),
    Mode("d+c", "NONREF + reused conversion", skip_frame="NONREF", convert="reused"),
    Mode("t", "NONREF but the packets the sampler keeps", skip_frame="NONREF", skip_frame_via="per_packet"),
    Mode("t+c", "targeted NONREF + reused conversion", skip_frame="NONREF", skip_frame_via="per_packet",
         convert="reused"),
    Mode("e", "skip_loop_filter=all (fast)", skip_loop_filter="all"),
    Mode("e+c", "fast + reused conversion", skip_loop_filter="all", convert="reused"),
    Mode("all", "targeted NONREF + fast + reused conversion", skip_frame="NONREF", skip_frame_via="per_packet",
         skip_loop_filter="all", convert="reused"),
    # one decoder thread (thread_type NONE): what frame threads buy with and without the skipping
    Mode("a1", "a, one thread (thread_type NONE)", thread_type="NONE"),
    Mode("d1", "d, one thread", skip_frame="NONREF", thread_type="NONE"),
    Mode("t1", "t, one thread", skip_frame="NONREF", skip_frame_via="per_packet", thread_type="NONE"),
    Mode("all1", "all, one thread", skip_frame="NONREF", skip_frame_via="per_packet", skip_loop_filter="all",
         convert="reused", thread_type="NONE"),
]
FULL, NONREF, TARGETED, FAST = (next(m for m in MODES if m.key == k) for k in ("a", "d", "t", "e"))

VARIANTS = [  # is NONREF honoured? one run each
    Mode("v1", "AUTO, attribute before 1st decode", skip_frame="NONREF"),
    Mode("v2", "AUTO, attribute after 1st frame", skip_frame="NONREF", skip_frame_via="after_first_frame"),
    Mode("v3", "AUTO, options={'skip_frame':'noref'}", skip_frame="NONREF", skip_frame_via="option"),
    Mode("v4", "FRAME, attribute before 1st decode", skip_frame="NONREF", thread_type="FRAME"),
    Mode("v5", "SLICE, attribute before 1st decode", skip_frame="NONREF", thread_type="SLICE"),
]


def bench_clip(name: str, path: Path, reps: int) -> None:
    info = clip_info(path)
    types = ", ".join(f"{k} {v}" for k, v in sorted(info.types.items()))
    print(f"\n=== clip {name}: {path} ({info.mbit_s:.1f} Mbit/s; {info.frames} frames: {types}; "
          f"non-reference (nal_ref_idc 0): {info.nonref}; {info.slices_per_frame:g} slices per frame)")
    runs = best_of(path, MODES, reps)
    base = runs["a"]
    print(f"{'mode':<5} {'':<44} {'decoded':>7} {'kept':>5} {'wall s':>7} {'CPU s':>6} {'src fps':>8} "
          f"{'x wall':>6} {'x CPU':>6}  quality of kept 128px frames vs c")
    for m in MODES:
        r = runs[m.key]
        quality = ""
        if m.key in ("e+c", "all", "d+c", "t+c", "all1"):
            same, moved = kept_psnr(runs["c"], r)
            quality = f"same PTS: {psnr_summary(same)}"
            if moved:
                quality += f"; moved PTS ({len(moved)}): {psnr_summary(moved)}"
        elif m.key == "b":
            same, _ = kept_psnr(runs["c"], r)
            quality = f"b vs c: {psnr_summary(same)}"
        print(f"{m.key:<5} {m.label:<44} {r.decoded:>7} {len(r.kept) or '':>5} {r.wall_s:>7.2f} {r.cpu_s:>6.2f} "
              f"{info.frames / r.wall_s:>8.0f} {base.wall_s / r.wall_s:>6.2f} {base.cpu_s / r.cpu_s:>6.2f}  {quality}")
        if r.leftover_options:
            print(f"      options NOT taken by avcodec_open2: {r.leftover_options}")
    per_kept = {k: [(getattr(runs[k], w) - getattr(base, w)) / len(runs[k].kept) * 1e3 for w in ("wall_s", "cpu_s")]
                for k in ("b", "c")}
    print("conversion cost in the decode loop, per kept frame (b-a, c-a; wall / CPU): "
          f"fresh {per_kept['b'][0]:.2f} / {per_kept['b'][1]:.2f} ms, reused {per_kept['c'][0]:.2f} / "
          f"{per_kept['c'][1]:.2f} ms")

    expected = info.frames - info.nonref
    print(f"NONREF honoured? expected {expected} decoded ({info.frames} - {info.nonref} non-reference)")
    for m in VARIANTS:
        r = decode(path, m)
        verdict = "honoured" if r.decoded <= expected + 8 and (info.nonref == 0 or r.decoded < info.frames) \
            else "NOT honoured"
        print(f"  {m.key} {m.label:<40} thread_type now {r.thread_type_after:<5} decoded {r.decoded:>5} "
              f"({r.decoded - expected:+d} vs expected) wall {r.wall_s:5.2f}s skip_frame now {r.skip_frame_after}"
              f"{' leftover options ' + str(r.leftover_options) if r.leftover_options else ''}: {verdict}")

    print("kept-frame times vs full decode (a sampler keeps the first decoded frame at or after each tick):")
    for key, rates in (("d", SAMPLER_RATES), ("t", (1.0, KEEP_FPS))):  # t targets the 4 fps ticks (1 fps: a subset)
        for fps in rates:
            s = shifts(base.times, runs[key].times, fps)
            print(f"  {key:<2}{fps:>5} fps: {s['slots']} slots, {s['changed']} moved (mean {s['mean_s'] * 1e3:.0f} ms, "
                  f"max {s['max_s'] * 1e3:.0f} ms), {s['missing']} lost, {s['extra']} extra; "
                  f"max gap between decoded frames {s['max_gap_s'] * 1e3:.0f} ms "
                  f"(slot {1e3 / fps:.0f} ms): {'OK' if s['missing'] == 0 and s['max_s'] < 1 / fps else 'BROKEN'}")
    full_cut = sample(base.times, KEEP_FPS)
    nonref_cut = sample(runs["d"].times, KEEP_FPS)
    if name == "b":
        for cut in cut_times(base.times[-1] + 1 / FPS):
            slot = math.floor(cut * KEEP_FPS + 1e-6)
            print(f"  cut at {cut:.2f}s: kept {full_cut.get(slot, float('nan')):.2f}s (full), "
                  f"{nonref_cut.get(slot, float('nan')):.2f}s (NONREF)")

    luma, chroma = psnr_lockstep(path, FAST)
    print(f"fast mode vs full decode, all {len(luma)} frames at full resolution: luma {psnr_summary(luma)}; "
          f"chroma {psnr_summary(chroma)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--reps", type=int, default=2, help="runs per mode; the best is reported")
    parser.add_argument("--keep-clip", type=Path, help="directory to write the clips to, or reuse them from")
    parser.add_argument("--ip-clip", type=Path, help="an existing I/P clip (e.g. bench_replay's --keep-clip)")
    parser.add_argument("--b-clip", type=Path, help="an existing B-frame clip")
    parser.add_argument("--clips", default="ip,b", help="which clips to measure")
    parser.add_argument("--media", nargs="*", type=Path, default=[],
                        help="other files to survey (NONREF honoured? sample shifts, CPU), e.g. ../shared/media/*")
    args = parser.parse_args()

    folder = args.keep_clip or Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    seconds = f"{args.seconds:g}s"
    clips = {"ip": (args.ip_clip or folder / f"decode_modes_ip_{seconds}.mp4", write_ip_clip),
             "b": (args.b_clip or folder / f"decode_modes_b_{seconds}.mp4", write_bframe_clip)}
    started = time.perf_counter()
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs; PyAV "
          f"{av.__version__}, FFmpeg {av.ffmpeg_version_info}; sampler {KEEP_FPS:g} fps at {KEEP_SIZE}px; "
          f"best of {args.reps}")
    names = [n for n in args.clips.split(",") if n]
    for name in names:
        path, writer = clips[name]
        if not path.exists():
            t0 = time.perf_counter()
            writer(path, args.seconds)
            print(f"clip {name}: wrote {path} in {time.perf_counter() - t0:.0f}s")
    if names:
        micro = clips["b" if "b" in names else names[0]][0]
        print(f"\nconversion micro-benchmark (first 50 frames of {micro.name}, ms per frame, best of 2):")
        for what, label, ms in conversion_microbench(micro):
            print(f"  {what:<14} {label:<30} {ms:6.2f}")
    for name in names:
        bench_clip(name, clips[name][0], args.reps)
    if args.media:
        survey([p for p in args.media if p.suffix not in (".md", ".txt")])
    print(f"\ntotal {time.perf_counter() - started:.0f}s; load average now "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (wall times are only as quiet as the machine)")


if __name__ == "__main__":
    main()
