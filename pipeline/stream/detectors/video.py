"""Video event detectors: scene_cut, motion_burst, black_video, frozen_video.

They run per stream on ``VideoSeries`` chunks (kept frames in PTS order) and emit an ``Event``
only once its end is known, so every event carries its real start and end and comes out once.
A scene cut needs ``min_scene_s`` of lookahead; ``VideoChangeStage`` makes that decision once
and feeds both scene_cut and motion_burst, so their outputs lag the input by up to that much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from pipeline.core.config import (
    BlackVideoConfig,
    DetectorsConfig,
    FrozenVideoConfig,
    MotionBurstConfig,
    SceneCutConfig,
)
from pipeline.output.records import Event
from pipeline.stream.spans import Span

# PTS are floats: a duration that equals its threshold up to this much counts as reaching it.
TIME_EPS_S = 1e-6


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, float(x)))


@dataclass
class VideoSeries:
    """Per-kept-frame signals of one chunk of one stream; every array is float64 [N].

    t_s:           PTS of the kept frames in seconds on the stream clock, increasing
                   (about 4 fps, irregular for variable frame rate).
    luma_mean:     mean BT.601 luma, 0..1.
    hist_distance: colour-histogram distance 0..1 to the previous kept frame; NaN for the
                   stream's first frame.
    motion:        mean absolute difference 0..1 of 16x16 luma thumbnails vs the previous kept
                   frame; NaN for the stream's first frame.
    """

    t_s: np.ndarray
    luma_mean: np.ndarray
    hist_distance: np.ndarray
    motion: np.ndarray

    def __post_init__(self) -> None:
        self.t_s = np.asarray(self.t_s, dtype=np.float64)
        if self.t_s.ndim != 1:
            raise ValueError(f"VideoSeries.t_s must be 1-D, got shape {self.t_s.shape}")
        for name in ("luma_mean", "hist_distance", "motion"):
            values = np.asarray(getattr(self, name), dtype=np.float64)
            if values.shape != self.t_s.shape:
                raise ValueError(f"VideoSeries.{name} has shape {values.shape}, expected {self.t_s.shape}")
            setattr(self, name, values)

    def __len__(self) -> int:
        return int(self.t_s.shape[0])

    def frames(self) -> Iterator["VideoFrame"]:
        columns = (self.t_s, self.luma_mean, self.hist_distance, self.motion)
        return (VideoFrame(*row) for row in zip(*(c.tolist() for c in columns)))


class VideoFrame(NamedTuple):
    t_s: float
    luma_mean: float
    hist_distance: float  # NaN: no predecessor
    motion: float  # NaN: no predecessor


class CutDecision(NamedTuple):
    """One frame after the scene-cut decision; frames come out in input order, each once."""

    frame: VideoFrame
    is_cut: bool
    lookahead_s: float  # media verified after a confirmed cut (< min_scene_s only at the end)


class VideoChangeStage:
    """Decides whether each kept frame is a confirmed scene cut.

    A frame with hist_distance >= threshold is a candidate. It is confirmed once a frame at or
    after t_cut + min_scene_s arrives and every frame before that stayed close to the candidate's
    content (each one's hist_distance to its predecessor < threshold / 2), or when the media ends
    first. A frame that breaks the lookahead is the change reverting (the end of a flash), so
    neither it nor the candidate is a cut: a scene shorter than min_scene_s is no scene.
    """

    def __init__(self, cfg: SceneCutConfig) -> None:
        self._threshold = cfg.threshold
        self._min_scene_s = cfg.min_scene_s
        self._candidate: VideoFrame | None = None
        self._held: list[VideoFrame] = []  # frames after the candidate, inside its lookahead

    def push(self, frame: VideoFrame) -> list[CutDecision]:
        decided: list[CutDecision] = []
        candidate = self._candidate
        if candidate is not None:
            lookahead_s = frame.t_s - candidate.t_s
            if lookahead_s >= self._min_scene_s - TIME_EPS_S:
                decided += self._release(is_cut=True, lookahead_s=lookahead_s)
            elif not frame.hist_distance >= self._threshold / 2:  # NaN: nothing to compare, stays
                self._held.append(frame)
                return decided
            else:
                decided += self._release(is_cut=False, lookahead_s=lookahead_s)
                decided.append(CutDecision(frame, False, 0.0))
                return decided
        if frame.hist_distance >= self._threshold:  # False for NaN
            self._candidate = frame
        else:
            decided.append(CutDecision(frame, False, 0.0))
        return decided

    def finish(self, end_s: float | None) -> list[CutDecision]:
        """The media ended: a candidate that has held so far is confirmed."""
        if self._candidate is None:
            return []
        last_t_s = self._held[-1].t_s if self._held else self._candidate.t_s
        end_s = last_t_s if end_s is None else max(end_s, last_t_s)
        return self._release(is_cut=True, lookahead_s=end_s - self._candidate.t_s)

    def pending_from_s(self) -> float | None:
        return None if self._candidate is None else self._candidate.t_s

    def _release(self, is_cut: bool, lookahead_s: float) -> list[CutDecision]:
        assert self._candidate is not None
        decided = [CutDecision(self._candidate, is_cut, lookahead_s if is_cut else 0.0)]
        decided += [CutDecision(f, False, 0.0) for f in self._held]
        self._candidate, self._held = None, []
        return decided


class SceneCutDetector:
    """One instantaneous event (start_s = end_s) per confirmed cut frame."""

    name = "scene_cut"
    version = "1"

    def __init__(self, stream_id: str, cfg: SceneCutConfig) -> None:
        self._stream_id = stream_id
        self._threshold = cfg.threshold

    def update(self, decisions: Sequence[CutDecision]) -> list[Event]:
        events = []
        for frame, is_cut, lookahead_s in decisions:
            if is_cut:
                # threshold -> 0.5, twice the threshold or more -> 1.
                confidence = _clip01(frame.hist_distance / (2.0 * self._threshold))
                attributes = {
                    "hist_distance": frame.hist_distance,
                    "motion": frame.motion if math.isfinite(frame.motion) else None,
                    "luma_mean": frame.luma_mean,
                    "lookahead_s": lookahead_s,
                }
                events.append(Event(self._stream_id, self.name, frame.t_s, frame.t_s, confidence,
                                    self.name, self.version, attributes=attributes))
        return events

    def finish(self, end_s: float | None) -> list[Event]:
        return []  # the shared VideoChangeStage holds pending candidates

    def pending_from_s(self) -> float | None:
        return None


class MotionBurstDetector:
    """Runs of frames with motion >= threshold that are not confirmed cuts.

    A burst ends at the first calm frame; bursts less than merge_gap_s apart (calm frame to next
    burst frame) merge, so a burst is emitted once a calm frame merge_gap_s past its end arrives.
    """

    name = "motion_burst"
    version = "1"

    def __init__(self, stream_id: str, cfg: MotionBurstConfig) -> None:
        self._stream_id = stream_id
        self._threshold = cfg.threshold
        self._merge_gap_s = cfg.merge_gap_s
        self._start_s: float | None = None
        self._end_s: float | None = None  # first calm frame; None while the burst is running
        self._peak = (0.0, 0.0)  # (motion, t_s)
        self._frames = 0

    def update(self, decisions: Sequence[CutDecision]) -> list[Event]:
        events = []
        for frame, is_cut, _ in decisions:
            in_burst = frame.motion >= self._threshold and not is_cut
            if in_burst:
                if self._end_s is not None and frame.t_s - self._end_s >= self._merge_gap_s - TIME_EPS_S:
                    events.append(self._close(self._end_s))
                if self._start_s is None:
                    self._start_s, self._peak, self._frames = frame.t_s, (frame.motion, frame.t_s), 0
                self._end_s = None
                self._frames += 1
                if frame.motion > self._peak[0]:
                    self._peak = (frame.motion, frame.t_s)
            elif self._start_s is not None:
                if self._end_s is None:
                    self._end_s = frame.t_s
                elif frame.t_s - self._end_s >= self._merge_gap_s - TIME_EPS_S:
                    events.append(self._close(self._end_s))  # no later burst frame can merge
        return events

    def finish(self, end_s: float | None) -> list[Event]:
        if self._start_s is None:
            return []
        if self._end_s is not None:
            return [self._close(self._end_s)]
        return [self._close(self._peak[1] if end_s is None else end_s)]

    def pending_from_s(self) -> float | None:
        return self._start_s

    def _close(self, end_s: float) -> Event:
        assert self._start_s is not None
        peak_motion, peak_t_s = self._peak
        attributes = {"peak_motion": peak_motion, "peak_t_s": peak_t_s, "frames": self._frames}
        event = Event(self._stream_id, self.name, self._start_s, end_s,
                      _clip01(peak_motion / (2.0 * self._threshold)), self.name, self.version,
                      attributes=attributes)
        self._start_s, self._end_s = None, None
        return event


class _RunDetector:
    """A condition that holds over a run of frames; an event if it lasts min_duration_s.

    The run opens at ``_begin`` and ends at the t_s of the first frame where it no longer
    holds, or at the end of the media. It keeps running statistics of its values (a ``Span``),
    so a camera frozen for hours costs what one frozen second does.
    """

    name = "run"
    version = "1"

    def __init__(self, stream_id: str, min_duration_s: float) -> None:
        self._stream_id = stream_id
        self._min_duration_s = min_duration_s
        self._run: Span | None = None

    def _begin(self, start_s: float) -> None:
        self._run = Span.open(start_s)

    def _close(self, end_s: float) -> list[Event]:
        run, self._run = self._run, None
        if run is None or end_s - run.start_s < self._min_duration_s - TIME_EPS_S:
            return []
        attributes = {"duration_s": end_s - run.start_s, "frames": run.steps, "mean": run.mean, "max": run.max}
        return [Event(self._stream_id, self.name, run.start_s, end_s, self._confidence(run.mean),
                      self.name, self.version, attributes=attributes)]

    def _confidence(self, mean_value: float) -> float:
        raise NotImplementedError

    def finish(self, end_s: float | None) -> list[Event]:
        if self._run is None:
            return []
        return self._close(self._run.start_s if end_s is None else max(end_s, self._run.start_s))

    def pending_from_s(self) -> float | None:
        return None if self._run is None else self._run.start_s

    carries_open_span = True  # a checkpoint carries its open run (DetectorBank.open_spans)

    def open_span(self) -> Span | None:
        return self._run

    def adopt_open_span(self, span: Span | None) -> None:
        """A resumed run takes the first run's open run as it was at the checkpoint."""
        self._run = span

    def forget_frames(self) -> None:
        """A gap: no frame before it is compared with one after it."""


class BlackVideoDetector(_RunDetector):
    """Frames with luma_mean <= max_luma; attributes mean/max are luma."""

    name = "black_video"

    def __init__(self, stream_id: str, cfg: BlackVideoConfig) -> None:
        super().__init__(stream_id, cfg.min_duration_s)
        self._max_luma = cfg.max_luma

    def update(self, frames: Sequence[VideoFrame]) -> list[Event]:
        events = []
        for frame in frames:
            if frame.luma_mean <= self._max_luma:
                if self._run is None:
                    self._begin(frame.t_s)
                self._run.extend(frame.t_s, frame.luma_mean)
            elif self._run is not None:
                events += self._close(frame.t_s)
        return events

    def _confidence(self, mean_value: float) -> float:
        return _clip01(1.0 - mean_value / (2.0 * self._max_luma))


class FrozenVideoDetector(_RunDetector):
    """Frames with motion <= max_motion that repeat a non-black frame and are not black.

    The run starts at the frame the first unchanged frame repeats; attributes mean/max are motion.
    """

    name = "frozen_video"

    def __init__(self, stream_id: str, cfg: FrozenVideoConfig, black_max_luma: float) -> None:
        super().__init__(stream_id, cfg.min_duration_s)
        self._max_motion = cfg.max_motion
        self._black_max_luma = black_max_luma
        self._previous: VideoFrame | None = None

    def update(self, frames: Sequence[VideoFrame]) -> list[Event]:
        events = []
        for frame in frames:
            previous, self._previous = self._previous, frame
            static = (
                previous is not None
                and frame.motion <= self._max_motion  # False for NaN
                and frame.luma_mean > self._black_max_luma
                and previous.luma_mean > self._black_max_luma
            )
            if static:
                if self._run is None:
                    self._begin(previous.t_s)
                self._run.extend(frame.t_s, frame.motion)
            elif self._run is not None:
                events += self._close(frame.t_s)
        return events

    def _confidence(self, mean_value: float) -> float:
        return _clip01(1.0 - mean_value / (2.0 * self._max_motion))

    def forget_frames(self) -> None:
        self._previous = None


def carries_open_span(detector) -> bool:
    return getattr(detector, "carries_open_span", False)


class VideoDetectors:
    """The enabled video detectors of one stream and the cut decision they share."""

    def __init__(self, stream_id: str, cfg: DetectorsConfig) -> None:
        self.scene_cut = SceneCutDetector(stream_id, cfg.scene_cut) if cfg.scene_cut.enabled else None
        self.motion_burst = MotionBurstDetector(stream_id, cfg.motion_burst) if cfg.motion_burst.enabled else None
        self.black_video = BlackVideoDetector(stream_id, cfg.black_video) if cfg.black_video.enabled else None
        self.frozen_video = (FrozenVideoDetector(stream_id, cfg.frozen_video, cfg.black_video.max_luma)
                             if cfg.frozen_video.enabled else None)
        self._on_decisions = [d for d in (self.scene_cut, self.motion_burst) if d is not None]
        self._on_frames = [d for d in (self.black_video, self.frozen_video) if d is not None]
        # motion_burst needs the cut decision even when scene_cut itself is disabled.
        self._stage = VideoChangeStage(cfg.scene_cut) if self._on_decisions else None
        self._last_t_s: float | None = None

    @property
    def detectors(self) -> list:
        return self._on_decisions + self._on_frames

    def update(self, series: VideoSeries) -> list[Event]:
        frames = list(series.frames())
        if not frames:
            return []
        self._last_t_s = frames[-1].t_s
        events = []
        for detector in self._on_frames:
            events += detector.update(frames)
        if self._stage is not None:
            decisions = [d for frame in frames for d in self._stage.push(frame)]
            for detector in self._on_decisions:
                events += detector.update(decisions)
        return events

    def forget_frames(self) -> None:
        """After a gap in the media: the next frame has no predecessor."""
        for detector in self._on_frames:
            detector.forget_frames()

    def finish(self, end_s: float | None) -> list[Event]:
        """Close everything at ``end_s``, the end of the media (None: at the last frame seen)."""
        if self._last_t_s is not None:
            # What was seen was seen: an end before the last frame cannot cut a condition short.
            end_s = self._last_t_s if end_s is None else max(end_s, self._last_t_s)
        events = []
        if self._stage is not None:
            decisions = self._stage.finish(end_s)
            for detector in self._on_decisions:
                events += detector.update(decisions)
        for detector in self.detectors:
            events += detector.finish(end_s)
        return events

    def pending_from_s(self, carried: bool = True) -> float | None:
        """The earliest start of a condition still open; ``carried`` False: of those a checkpoint
        does not carry (DetectorBank.open_spans)."""
        starts = [d.pending_from_s() for d in self.detectors if carried or not carries_open_span(d)]
        if self._stage is not None:
            starts.append(self._stage.pending_from_s())
        starts = [s for s in starts if s is not None]
        return min(starts) if starts else None
