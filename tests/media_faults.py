"""Broken inputs made from good generated clips, for bad-input tests."""

from __future__ import annotations

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
