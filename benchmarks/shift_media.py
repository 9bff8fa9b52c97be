"""Copies of a real clip with a known A/V offset injected: a stream-copy remux into Matroska.

Only the packets of the first video and the first audio stream are copied, and nothing is
re-encoded, so pictures and sounds are bit-identical to the source and only their timing
changes. A positive shift (audio late) delays every audio packet; a negative one delays every
video packet instead, so no timestamp goes below the source's own first one.

The injected shift is measured against the unshifted copy (``shift_s = 0``), not the source:
the remux itself may move the first decoded frame (an MP4 edit list that trims AAC or MP3
priming samples is not carried into Matroska) while the content stays where it was.
"""

from __future__ import annotations

from pathlib import Path

import av

TOLERANCE_S = 0.002  # Matroska stores milliseconds: up to 1 ms of rounding on each stream


class ShiftError(RuntimeError):
    """A shifted copy whose first frames did not move by the shift; the message names the clip."""


def write_shifted(src: Path, dst: Path, shift_s: float) -> None:
    """Remux ``src``'s first video and audio stream into ``dst`` (.mkv), one of them delayed."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="matroska") as out:
        video, audio = inp.streams.video[0], inp.streams.audio[0]
        targets = {video.index: out.add_stream_from_template(video),
                   audio.index: out.add_stream_from_template(audio)}
        delayed = audio if shift_s > 0 else video
        for packet in inp.demux(video, audio):
            if packet.dts is None:  # the demuxer's flush packet: nothing to write
                continue
            if packet.stream.index == delayed.index:
                # Ticks of the source's time base; mux() rescales to the output stream's (1/1000).
                ticks = round(abs(shift_s) / packet.time_base)
                packet.dts += ticks
                if packet.pts is not None:
                    packet.pts += ticks
            packet.stream = targets[packet.stream.index]
            out.mux(packet)


def audio_lead_s(path: Path) -> float:
    """First decoded audio frame's time minus the first decoded video frame's, in seconds."""
    first: dict[str, float] = {}
    with av.open(str(path)) as container:
        streams = (container.streams.video[0], container.streams.audio[0])
        for packet in container.demux(*streams):
            kind = packet.stream.type
            if kind in first:
                continue
            for frame in packet.decode():
                if frame.pts is not None:
                    first[kind] = float(frame.pts * frame.time_base)
                    break
            if len(first) == 2:
                return first["audio"] - first["video"]
    raise ShiftError(f"{path.name}: no decodable audio or video frame")


def write_shifted_set(src: Path, folder: Path, shifts_s: list[float]) -> dict[float, Path]:
    """One verified copy of ``src`` per shift, named ``<src name>_<shift>s.mkv`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = {shift: folder / f"{src.name}_{shift:+.2f}s.mkv" for shift in sorted(set(shifts_s) | {0.0})}
    for shift, dst in copies.items():
        write_shifted(src, dst, shift)
    baseline_s = audio_lead_s(copies[0.0])
    for shift, dst in copies.items():
        moved_s = audio_lead_s(dst) - baseline_s
        if abs(moved_s - shift) > TOLERANCE_S:
            raise ShiftError(f"{src.name}: the copy shifted by {shift:+.2f}s moved audio by {moved_s:+.3f}s")
    return {shift: copies[shift] for shift in shifts_s}
