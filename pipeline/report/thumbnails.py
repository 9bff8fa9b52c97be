"""One small JPEG per scene, taken from the source media with PyAV, for the page to embed.

Cheap on purpose: at most ``MAX_PER_STREAM`` pictures a stream (spread evenly over its scenes), each
one seek to the keyframe before the time and a decode forward to it (given up after
``MAX_DECODED_FRAMES``: the frame reached then is near enough for a thumbnail), scaled to
``WIDTH_PX`` and encoded with FFmpeg's MJPEG encoder, so the report needs no imaging library.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

WIDTH_PX = 160
MAX_PER_STREAM = 40
MAX_DECODED_FRAMES = 250  # about 10 s of 25 fps video after a keyframe
JPEG_QSCALE = 7  # FFmpeg's 2 (best) .. 31; 7 keeps a 160 px picture near 3 KB
MEDIA_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".mov", ".m4v", ".avi", ".ts", ".mpg", ".mpeg", ".flv"})


@dataclass
class Thumbnail:
    time_s: float  # stream clock
    jpeg_b64: str
    event_id: str  # of the scene (or scene cut) it shows


def media_files(paths: list[Path]) -> list[Path]:
    """The files named, and the media files directly inside the folders named."""
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
        else:
            files.append(path)
    return files


def match_media(stream_id: str, uri: str | None, files: list[Path]) -> Path | None:
    """The file a stream was read from: the same path, else the same file name, else named as the stream."""
    if uri:
        target = Path(uri.removeprefix("file://"))
        for f in files:
            if target.exists() and f.exists() and f.resolve() == target.resolve():
                return f
        for f in files:
            if f.name == target.name:
                return f
    for f in files:
        if stream_id in (f.name, f.stem):
            return f
    return None


def scene_times(events: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """(time_s, event_id) per scene: its midpoint; without scene events, just after each scene cut."""
    scenes = [e for e in events if e["label"] == "scene"]
    if scenes:
        times = [((float(e["start_s"]) + float(e["end_s"])) / 2, str(e.get("event_id", ""))) for e in scenes]
    else:
        cuts = [e for e in events if e["label"] == "scene_cut"]
        times = [(0.0, "")] + [(float(e["start_s"]) + 0.5, str(e.get("event_id", ""))) for e in cuts] if cuts else []
    times.sort()
    if len(times) > MAX_PER_STREAM:  # evenly spread, first and last kept
        step = (len(times) - 1) / (MAX_PER_STREAM - 1)
        times = [times[round(i * step)] for i in range(MAX_PER_STREAM)]
    return times


def _pick_video(container: av.container.InputContainer, video: dict[str, Any] | None):
    streams = list(container.streams.video)
    if not streams:
        return None
    if video:  # the stream the pipeline decoded, as its stream_start describes it
        for s in streams:
            if (s.codec_context.width, s.codec_context.height) == (video.get("width"), video.get("height")):
                return s
    return streams[0]


def _jpeg(frame: av.VideoFrame) -> bytes:
    height = max(2, round(WIDTH_PX * frame.height / max(1, frame.width) / 2) * 2)
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = WIDTH_PX, height, "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    encoder.qmin = encoder.qmax = JPEG_QSCALE
    picture = frame.reformat(width=WIDTH_PX, height=height, format="yuvj420p")
    return b"".join(bytes(p) for p in [*encoder.encode(picture), *encoder.encode(None)])


def take_thumbnails(path: Path, times: list[tuple[float, str]], video: dict[str, Any] | None) -> list[Thumbnail]:
    """Raises av.FFmpegError (or OSError) when the file cannot be read; the caller notes it."""
    out = []
    with av.open(str(path), metadata_errors="replace") as container:  # a title not in UTF-8 is no reason to fail
        stream = _pick_video(container, video)
        if stream is None:
            return []
        base = stream.start_time or 0  # stream clock 0 is the stream's first timestamp
        for time_s, event_id in times:
            container.seek(base + int(time_s / stream.time_base), stream=stream, backward=True)
            frame = None
            for n, decoded in enumerate(container.decode(stream)):
                frame = decoded
                if n >= MAX_DECODED_FRAMES or (decoded.pts is not None
                                               and (decoded.pts - base) * stream.time_base >= time_s - 0.02):
                    break
            if frame is not None:
                out.append(Thumbnail(round(time_s, 3), base64.b64encode(_jpeg(frame)).decode("ascii"), event_id))
    return out
