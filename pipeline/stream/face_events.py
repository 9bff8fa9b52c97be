"""Face events: one stream's face counts per sampled frame become `face_present` spans.

Input: ``FaceCounts`` of one stream in time order (``pipeline.compute.face_stage``), each row a frame
sampled at ``faces.fps`` standing for [t_s - step_s/2, t_s + step_s/2). A frame with at least
one face (a box at or above ``faces.min_probability``) is a step with a face present: the
shared hysteresis spans (``pipeline.stream.spans``) open a span at such a frame, extend it over the
following ones and close it at the first frame without a face, or at a pause in the frames
longer than a step. A span shorter than ``faces.min_duration_s`` is no event.

An event (label ``face_present``, detector ``faces``) runs from the start of its first step to
the end of its last; its confidence is the mean over its frames of the most probable face,
and its attributes say how many faces: ``max_faces`` (in one frame), ``mean_faces`` (per
frame), ``frames`` and ``peak_probability``. Running sums only, so a face on screen for hours
costs constant memory.
"""

from __future__ import annotations

from pipeline.core.config import FacesConfig
from pipeline.core.media import FaceCounts
from pipeline.output.records import Event
from pipeline.stream.spans import HysteresisSpans, Span

LABEL = "face_present"
DETECTOR = "faces"
VERSION = "1"
_PRESENT = 1.0  # a step's score: a face is present, or not (0)


class FaceEvents:
    def __init__(self, stream_id: str, cfg: FacesConfig):
        self.stream_id = stream_id
        self.step_s = 1.0 / cfg.fps
        self._spans = HysteresisSpans(_PRESENT, _PRESENT, cfg.min_duration_s, max_gap_s=self.step_s)
        self.last_end_s: float | None = None

    def update(self, faces: FaceCounts) -> list[Event]:
        """One chunk's counts; returns the face_present events that ended in them."""
        closed: list[tuple[str, Span]] = []
        half_s = self.step_s / 2
        for t_s, count, probability in zip(faces.t_s.tolist(), faces.count.tolist(),
                                           faces.max_probability.tolist()):
            end_s = t_s + half_s
            closed += self._spans.step(max(0.0, t_s - half_s), end_s, {LABEL: _PRESENT if count > 0 else 0.0})
            span = self._spans.open.get(LABEL)
            if span is not None:  # this frame opened or extended it
                stats = span.context
                stats["faces"] = stats.get("faces", 0) + count
                stats["max_faces"] = max(stats.get("max_faces", 0), count)
                stats["probability"] = stats.get("probability", 0.0) + probability
                stats["peak_probability"] = max(stats.get("peak_probability", 0.0), probability)
            self.last_end_s = end_s
        return [self._event(span) for _, span in closed]

    def finish(self, end_s: float | None) -> list[Event]:
        """The stream ended (its video at ``end_s``): close what is open, never past the last frame's step."""
        if self.last_end_s is not None and end_s is not None:
            end_s = min(end_s, self.last_end_s)
        return [self._event(span) for _, span in self._spans.close_all(end_s)]

    def _event(self, span: Span) -> Event:
        stats = span.context
        attributes = {
            "max_faces": int(stats["max_faces"]),
            "mean_faces": round(stats["faces"] / span.steps, 3),
            "frames": span.steps,
            "peak_probability": round(stats["peak_probability"], 3),
        }
        return Event(self.stream_id, LABEL, round(span.start_s, 3), round(span.end_s, 3),
                     confidence=round(stats["probability"] / span.steps, 3), detector=DETECTOR,
                     detector_version=VERSION, attributes=attributes)
