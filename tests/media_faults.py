"""Broken inputs made from good generated clips, for bad-input tests."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def truncated(source: Path, out: Path, keep_fraction: float = 0.5) -> Path:
    data = source.read_bytes()
    out.write_bytes(data[: int(len(data) * keep_fraction)])
    return out


def with_garbled_packets(source: Path, out: Path, start_s: float, end_s: float, seed: int = 1) -> Path:
    """Remux ``source`` to Matroska with every packet in [start_s, end_s) replaced by random bytes."""
    rng = np.random.default_rng(seed)
    with av.open(str(source)) as src, av.open(str(out), "w") as dst:
        out_streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is None:
                continue
            target = out_streams[packet.stream.index]
            if start_s <= float(packet.pts * packet.time_base) < end_s:
                garbled = av.Packet(rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
                garbled.pts, garbled.dts = packet.pts, packet.dts
                garbled.time_base, garbled.duration = packet.time_base, packet.duration
                packet = garbled
            packet.stream = target
            dst.mux(packet)
    return out


def _nth_packet_near(source: Path, stream_kind: str, at_s: float) -> tuple[int, float, float]:
    """(index among ``stream_kind``'s packets, pts_s, duration_s) of the first packet at or after ``at_s``."""
    with av.open(str(source)) as src:
        stream = getattr(src.streams, stream_kind)[0]
        for n, packet in enumerate(p for p in src.demux(stream) if p.dts is not None):
            pts_s = float(packet.pts * packet.time_base)
            if pts_s >= at_s:
                return n, pts_s, float(packet.duration * packet.time_base)
    raise ValueError(f"no {stream_kind} packet at or after {at_s} s in {source}")


def _remux(source: Path, out: Path, stream_kind: str, at_s: float, change) -> tuple[float, float]:
    """Copy ``source``'s first video and audio streams to ``out`` (container by suffix), passing the
    chosen packet of ``stream_kind`` through ``change`` (a packet or None to drop it);
    returns the chosen packet's (pts_s, duration_s) in ``source``."""
    chosen, pts_s, duration_s = _nth_packet_near(source, stream_kind, at_s)
    with av.open(str(source)) as src, av.open(str(out), "w") as dst:
        kept = [s for s in (src.streams.video[:1] + src.streams.audio[:1])]
        out_streams = {s.index: dst.add_stream_from_template(s) for s in kept}
        seen = 0
        for packet in src.demux(*kept):
            if packet.dts is None:
                continue
            target = out_streams[packet.stream.index]
            if packet.stream.type == stream_kind:
                seen += 1
                if seen - 1 == chosen:
                    packet = change(packet)
                    if packet is None:
                        continue
            packet.stream = target
            dst.mux(packet)
    return pts_s, duration_s


def without_packet(source: Path, out: Path, stream_kind: str, at_s: float) -> tuple[float, float]:
    """Remux ``source`` without the first ``stream_kind`` ("audio" or "video") packet at or after ``at_s``,
    as a lost network packet would leave it; returns that packet's (pts_s, duration_s)."""
    return _remux(source, out, stream_kind, at_s, lambda packet: None)


def with_bit_flips(source: Path, out: Path, stream_kind: str, at_s: float, n_bits: int,
                   seed: int = 1) -> tuple[float, float]:
    """Remux ``source`` with ``n_bits`` random bits flipped in the payload of the first ``stream_kind``
    packet at or after ``at_s`` (its size and times kept); returns that packet's (pts_s, duration_s)."""
    rng = np.random.default_rng(seed)

    def flip(packet: av.Packet) -> av.Packet:
        payload = np.frombuffer(bytes(packet), np.uint8).copy()
        for bit in rng.choice(payload.size * 8, size=min(n_bits, payload.size * 8), replace=False):
            payload[bit // 8] ^= np.uint8(1 << (bit % 8))
        flipped = av.Packet(payload.tobytes())
        flipped.pts, flipped.dts = packet.pts, packet.dts
        flipped.time_base, flipped.duration = packet.time_base, packet.duration
        flipped.is_keyframe = packet.is_keyframe
        return flipped

    return _remux(source, out, stream_kind, at_s, flip)


# Same length as the invalid bytes that replace it, so no box or element size changes.
_TITLE_PLACEHOLDER = b"TITLEXXXXXXX"
_NOT_UTF8 = b"\xff\xfe\xc3\x28caf\xe9\x80\xc0\xaf!"


def with_non_utf8_metadata(source: Path, out: Path) -> Path:
    """Remux ``source`` with a title tag whose bytes are not UTF-8 (as old taggers wrote Latin-1).

    PyAV only writes str metadata, so an ASCII placeholder is written and its bytes are then
    replaced in the file by as many invalid ones."""
    assert len(_TITLE_PLACEHOLDER) == len(_NOT_UTF8)
    with av.open(str(source)) as src, av.open(str(out), "w") as dst:
        kept = [s for s in (src.streams.video[:1] + src.streams.audio[:1])]
        out_streams = {s.index: dst.add_stream_from_template(s) for s in kept}
        dst.metadata["title"] = _TITLE_PLACEHOLDER.decode()
        for packet in src.demux(*kept):
            if packet.dts is None:
                continue
            packet.stream = out_streams[packet.stream.index]
            dst.mux(packet)
    data = out.read_bytes()
    assert data.count(_TITLE_PLACEHOLDER) == 1, "the placeholder title must appear once"
    out.write_bytes(data.replace(_TITLE_PLACEHOLDER, _NOT_UTF8))
    return out


def _adts_tone(rate_hz: int, layout: str, start_s: float, duration_s: float) -> bytes:
    """The sample timeline's audio over [start_s, start_s + duration_s) as raw AAC in ADTS frames."""
    from pipeline.app.sample import audio_signal

    channels = 1 if layout == "mono" else 2
    out = io.BytesIO()
    with av.open(out, "w", format="adts") as container:
        stream = container.add_stream("aac", rate=rate_hz, layout=layout)
        total = int(round(duration_s * rate_hz))
        for first in range(0, total, 1024):
            mono = audio_signal(start_s + np.arange(first, min(first + 1024, total)) / rate_hz)
            planar = np.repeat(mono[None], channels, 0)
            frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate_hz, first, Fraction(1, rate_hz)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def with_audio_layout_change(out: Path, change_s: float = 2.0, duration_s: float = 4.0) -> float:
    """An MPEG-TS clip (video and one AAC track) whose audio switches from mono 44.1 kHz to stereo 48 kHz
    at about ``change_s``, as a broadcast does between programmes: each ADTS frame carries its own
    layout and rate, so the decoder's frames change mid-stream. Returns the time of the first stereo
    frame (on the file's clock, the first packet at 0)."""
    from pipeline.app.sample import video_frame_at

    adts = io.BytesIO(_adts_tone(44100, "mono", 0.0, change_s)
                      + _adts_tone(48000, "stereo", change_s, duration_s - change_s))
    width, height, fps = 160, 120, 25
    with av.open(adts, format="aac") as src, av.open(str(out), "w", format="mpegts") as dst:
        audio_in = src.streams.audio[0]
        audio_out = dst.add_stream_from_template(audio_in)
        video = dst.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "g": "25"}
        # The ADTS demuxer times each frame from its own header, so the packets' times are right
        # across the change; video frames are muxed in between, in time order.
        next_frame, change_at_s = 0, None
        for packet in src.demux(audio_in):
            if packet.pts is None:
                continue
            packet_s = float(packet.pts * packet.time_base)
            if change_at_s is None and packet_s > 0 and _adts_is_stereo(bytes(packet)):
                change_at_s = packet_s
            while next_frame / fps <= packet_s and next_frame / fps < duration_s:
                rgb = video_frame_at(next_frame / fps, width, height)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = next_frame, Fraction(1, fps)
                dst.mux(video.encode(frame))
                next_frame += 1
            packet.stream = audio_out
            dst.mux(packet)
        dst.mux(video.encode(None))
    assert change_at_s is not None
    return change_at_s


def _adts_is_stereo(frame: bytes) -> bool:
    """The channel configuration field of an ADTS header (3 bits across bytes 2 and 3) says two channels."""
    return ((frame[2] & 0x01) << 2 | frame[3] >> 6) == 2
