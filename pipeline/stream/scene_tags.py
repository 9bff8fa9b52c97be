"""Scene tags: what the image tagger saw in each scene, as one ``scene`` event per scene.

A scene runs from one ``scene_cut`` (or the stream's start) to the next (or the stream's
end). Input: the image tagger's ``ClassScores`` of one stream, each row a sampled frame
standing for ``step_s``; the stream's cuts as they are decided; and the video watermark.
Output: per scene an ``Event`` labelled ``scene`` over [start_s, end_s], its attributes the
scene's ``index`` (0 first) and its ``visual_tags`` (up to ``top_n`` ImageNet classes, most
seconds first, each with seconds and max_confidence); its confidence is the first tag's
max_confidence, 0 for a scene where nothing reached ``tag_min``.

A cut is decided up to ``lookahead_s`` after the frame it is at (the cut detector's
lookahead), so frames wait that long before they count for the current scene. Memory stays
flat on a stream without cuts: only that lookahead of frames waits, the rest are running
totals.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from pipeline.core.media import ClassScores
from pipeline.output.records import Event, event_id
from pipeline.stream.tag_events import TagTotals, Vocabulary

LABEL = "scene"
DETECTOR = "scene_tags"
VERSION = "1"


class SceneTags:
    def __init__(self, stream_id: str, vocabulary: Vocabulary, eligible: np.ndarray, step_s: float,
                 tag_min: float, lookahead_s: float, top_n: int):
        self.stream_id, self.vocabulary, self.eligible = stream_id, vocabulary, eligible
        self.step_s, self.tag_min, self.lookahead_s, self.top_n = step_s, tag_min, lookahead_s, top_n
        self._waiting: deque[tuple[float, dict[int, float]]] = deque()  # (t_s, class -> score), by time
        self._totals = TagTotals(vocabulary, tag_min)
        self._start_s = 0.0
        self._index = 0

    def add(self, scores: ClassScores) -> None:
        for t_s, indices, values in zip(scores.t_s.tolist(), scores.class_index.tolist(), scores.score.tolist()):
            # Rounded as the tag events round them, so a class on tag_min cannot flip between runs.
            self._waiting.append((t_s, {i: round(v, 3) for i, v in zip(indices, values) if self.eligible[i]}))

    def advance(self, video_watermark_s: float) -> None:
        """Frames a cut can no longer come before count for the current scene."""
        self._count_until(video_watermark_s - self.lookahead_s)

    def cut(self, t_s: float) -> list[Event]:
        """A scene cut at ``t_s``: the scene before it ends there (none if it would be empty)."""
        if t_s <= self._start_s:
            return []
        self._count_until(t_s)
        return [self._close(t_s)]

    def finish(self, end_s: float | None) -> list[Event]:
        """The stream ended (its video at ``end_s``): the last scene ends with it."""
        last_t_s = self._waiting[-1][0] + self.step_s / 2 if self._waiting else self._start_s
        self._count_until(float("inf"))
        end_s = end_s if end_s is not None else last_t_s
        return [self._close(end_s)] if end_s > self._start_s else []

    def state(self) -> dict:
        """What a checkpoint carries: the open scene (its start, index, totals) and the frames waiting."""
        return {"start_s": self._start_s, "index": self._index, "totals": self._totals.state(),
                "waiting": [[t_s, [[i, v] for i, v in scores.items()]] for t_s, scores in self._waiting]}

    def adopt(self, state: dict) -> None:
        self._start_s, self._index = float(state["start_s"]), int(state["index"])
        self._totals = TagTotals(self.vocabulary, self.tag_min)
        self._totals.restore(state["totals"])
        self._waiting = deque((float(t_s), {int(i): v for i, v in scores}) for t_s, scores in state["waiting"])

    def open_event_ids(self) -> list[str]:
        return [event_id(self.stream_id, LABEL, round(self._start_s, 3))]

    def _count_until(self, t_s: float) -> None:
        while self._waiting and self._waiting[0][0] < t_s:
            self._totals.add(self._waiting.popleft()[1], self.step_s)

    def _close(self, end_s: float) -> Event:
        tags = self._totals.top(self.top_n)
        event = Event(self.stream_id, LABEL, round(self._start_s, 3), round(end_s, 3),
                      tags[0]["max_confidence"] if tags else 0.0, DETECTOR, VERSION,
                      attributes={"index": self._index, "visual_tags": tags})
        self._start_s, self._index = end_s, self._index + 1
        self._totals = TagTotals(self.vocabulary, self.tag_min)
        return event
