"""Decode only the video frames a sampler keeps: ``decode.skip_nonref``.

Frames no other frame references (most B-frames) cost decode time and feed nothing when every
sampler (video.fps, the image tagger's, the face detector's) keeps far fewer frames than the
source has. They are skipped per packet, so that the kept frames stay bit-identical to a full
decode's (``benchmarks/bench_decode_modes.py``: a plain ``skip_frame = NONREF`` moved half the
4 fps samples by one source frame on B-frame content, which changed face counts).
"""

from __future__ import annotations

import math

from pipeline.core.config import Config

# decode.skip_nonref=auto skips while every sampler keeps fewer frames per second than this
# share of the source's rate (the frames left out must be a good part of those decoded).
NONREF_MAX_SAMPLED_SHARE = 0.5


class NonrefSkipper:
    """decode.skip_nonref: video frames no other frame references (most B-frames) are not decoded,
    except those a sampler keeps, so that the samples stay the full decode's.

    A PTS sampler keeps the first frame at or after each of its ticks: on a constant-rate source,
    the frame less than a frame period after the tick. That packet is decoded whatever its kind,
    the others with ``skip_frame = "NONREF"`` (FFmpeg's frame threads copy it from this context
    with every packet they take). Should a sampler all the same keep a later frame, with frames
    left out just before it (a variable frame rate), every frame is decoded from there on.
    benchmarks.bench_decode_modes measures it."""

    def __init__(self, codec_context, rates: list[float], source_fps: float):
        self.codec_context, self.rates = codec_context, rates
        self.period_s = 1 / source_fps
        self.active = True
        self._setting: str | None = None
        self._last_s: float | None = None

    def before(self, packet_t_s: float | None) -> None:
        """Set skip_frame for the packet at stream time ``packet_t_s`` (None: no PTS), before it is
        sent to the decoder."""
        if not self.active:
            return
        sampled = packet_t_s is None or self._sampled(packet_t_s)
        setting = "DEFAULT" if sampled else "NONREF"
        if setting != self._setting:
            self.codec_context.skip_frame = self._setting = setting

    def _sampled(self, t_s: float) -> bool:
        return any(t_s - math.floor(t_s * rate + 1e-6) / rate < self.period_s - 1e-6 for rate in self.rates)

    def decoded(self, t_s: float) -> None:
        """A video frame came out at ``t_s``."""
        last_s, self._last_s = self._last_s, t_s
        if not self.active or last_s is None or t_s - last_s < 1.5 * self.period_s:
            return  # nothing left out just before it
        for rate in self.rates:
            slot = math.floor(t_s * rate + 1e-6)
            if slot > math.floor(last_s * rate + 1e-6) and not self._sampled(t_s):
                self.codec_context.skip_frame, self.active = "DEFAULT", False
                return


def sampler_rates(cfg: Config) -> list[float]:
    """Frames per media second of each sampler that runs: video.fps, the image tagger's, the face
    detector's."""
    rates = [cfg.video.fps]
    if cfg.visual_tags.enabled:
        rates.append(cfg.visual_tags.fps)
    if cfg.faces.enabled:
        rates.append(cfg.faces.fps)
    return rates


def skip_nonref_wanted(cfg: Config, source_fps: float | None) -> bool:
    """Whether the decoder skips non-reference frames (``decode.skip_nonref``; never on a source of
    unknown rate); auto: while every sampler keeps under half the source's rate."""
    setting = cfg.decode.skip_nonref
    if not source_fps or setting is False:
        return False
    return setting is True or max(sampler_rates(cfg)) < NONREF_MAX_SAMPLED_SHARE * source_fps
