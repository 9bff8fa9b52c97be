"""Per-stream summary: what happened so far, emitted every ``records.summary_every_s``
of stream time and once more, final, at the end of the stream."""

from __future__ import annotations

import heapq
import time
from collections import Counter
from typing import Callable

from pipeline.output.records import Event, Summary
from pipeline.stream.sync_tracker import SyncTracker

MAX_TAGS = 10  # classes listed in audio_tags and in visual_tags

# Labels whose total duration the summary reports, by summary field.
_DURATION_FIELDS = {"silence": "silence_s", "black_video": "black_s", "frozen_video": "frozen_s",
                    "speech": "speech_s"}


class TopMoments:
    """The ``limit`` events with the highest confidence so far, in constant memory.

    The same choice as ranking every event by (confidence descending, start_s ascending) and
    keeping the first ``limit``, ties to the one added first (a stable sort), without keeping
    every event: a min-heap of at most ``limit`` entries whose root is the weakest kept, keyed
    (confidence, -start_s, -arrival). Each entry keeps only what a summary lists of its event.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._heap: list[tuple[float, float, int, dict]] = []
        self._added = 0  # events offered so far: the next one's arrival number

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, event: Event) -> None:
        if self.limit <= 0:
            return
        key = (event.confidence, -event.start_s, -self._added)
        self._added += 1
        if len(self._heap) >= self.limit and key <= self._heap[0][:3]:
            return  # no better than the weakest kept
        moment = {"label": event.label, "start_s": event.start_s, "end_s": event.end_s,
                  "confidence": event.confidence, "event_id": event.event_id}
        if len(self._heap) < self.limit:
            heapq.heappush(self._heap, (*key, moment))
        else:
            heapq.heapreplace(self._heap, (*key, moment))

    def state(self) -> dict:
        """The kept moments with their ranks, and how many were added (a checkpoint keeps it)."""
        return {"kept": [[c, neg_start, neg_arrival, moment] for c, neg_start, neg_arrival, moment in self._heap],
                "added": self._added}

    def restore(self, state: dict) -> None:
        self._heap = [(float(c), float(s), int(a), dict(m)) for c, s, a, m in state["kept"]]
        heapq.heapify(self._heap)
        self._added = int(state["added"])

    def listed(self) -> list[dict]:
        """The kept moments by start_s; equal starts in rank order (confidence, then arrival)."""
        ranked = sorted(self._heap, key=lambda entry: (-entry[1], -entry[0], -entry[2]))
        return [dict(entry[3]) for entry in ranked]


class SummaryTracker:
    def __init__(self, stream_id: str, every_s: float, top_moments: int, has_video: bool,
                 report_confidence: float = 0.0, report_min_windows: int = 1):
        self.stream_id = stream_id
        self.every_s = every_s
        self.top_moments = top_moments
        self.has_video = has_video
        self.started_wall_s = time.monotonic()
        self.counts: Counter[str] = Counter()
        self.durations_s = {name: 0.0 for name in _DURATION_FIELDS.values()}
        self.top = TopMoments(top_moments)  # not every event: a 24/7 stream keeps flat memory
        self.windows = 0
        self.partial_windows = 0
        self.processed_s = 0.0
        self.sync: SyncTracker | None = None  # set by the session once A/V sync reports
        self.report_confidence = report_confidence
        self.report_min_windows = report_min_windows
        self.tags: Callable[[int], dict[str, list[dict]]] | None = None  # Understanding.top_tags
        self.words = 0
        self.language_s: Counter[str] = Counter()
        self.source_state = "file"  # a live source's state (pipeline/ingest/live_source.py)
        self.outages, self.outage_s = 0, 0.0
        self._next_due_s = every_s

    def state(self) -> dict:
        """The running counters, small and JSON (a checkpoint keeps them; ``restore`` takes them back).
        Not in it: the wall clock (a resumed run's own) and the A/V offset estimate (from the
        resumed run's windows only)."""
        return {"counts": dict(self.counts), "durations_s": dict(self.durations_s), "top": self.top.state(),
                "windows": self.windows, "partial_windows": self.partial_windows, "processed_s": self.processed_s,
                "words": self.words, "language_s": dict(self.language_s), "source_state": self.source_state,
                "outages": self.outages, "outage_s": self.outage_s, "next_due_s": self._next_due_s}

    def restore(self, state: dict) -> None:
        self.counts = Counter({k: int(v) for k, v in state["counts"].items()})
        self.durations_s.update({k: float(v) for k, v in state["durations_s"].items()})
        self.top.restore(state["top"])
        self.windows, self.partial_windows = int(state["windows"]), int(state["partial_windows"])
        self.processed_s, self.words = float(state["processed_s"]), int(state["words"])
        self.language_s = Counter({k: float(v) for k, v in state["language_s"].items()})
        self.source_state = state["source_state"]
        self.outages, self.outage_s = int(state["outages"]), float(state["outage_s"])
        self._next_due_s = float(state["next_due_s"])

    def add_event(self, event: Event) -> None:
        self.counts[event.label] += 1
        if event.label in _DURATION_FIELDS:
            self.durations_s[_DURATION_FIELDS[event.label]] += max(0.0, event.end_s - event.start_s)
        self.top.add(event)

    def add_transcript(self, words: int, language: str, seconds: float) -> None:
        self.words += words
        self.language_s[language] += seconds

    def add_windows(self, emitted: int, partial: int) -> None:
        self.windows += emitted
        self.partial_windows += partial

    def advance(self, processed_s: float) -> Summary | None:
        """Note stream progress; returns a periodic summary when one is due."""
        self.processed_s = max(self.processed_s, processed_s)
        if self.processed_s < self._next_due_s:
            return None
        while self._next_due_s <= self.processed_s:
            self._next_due_s += self.every_s
        return self.build(final=False)

    def _reportable(self, sync) -> bool:
        return (sync is not None and sync.confidence >= self.report_confidence
                and sync.windows >= self.report_min_windows)

    def build(self, final: bool) -> Summary:
        wall_s = time.monotonic() - self.started_wall_s
        sync = self.sync.estimate(whole_stream=final) if self.sync is not None else None
        return Summary(
            stream_id=self.stream_id,
            final=final,
            processed_s=round(self.processed_s, 3),
            wall_s=round(wall_s, 3),
            speed_x_realtime=round(self.processed_s / wall_s, 2) if wall_s > 0 else 0.0,
            counts_by_label=dict(sorted(self.counts.items())),
            **{name: round(value, 3) for name, value in self.durations_s.items()},
            scenes=self.counts.get("scene_cut", 0) + 1 if self.has_video and self.processed_s > 0 else 0,
            windows=self.windows,
            partial_windows=self.partial_windows,
            top_moments=self.top.listed(),
            # Below the calibrated confidence, or on fewer windows than an av_desync needs, the
            # number is noise (one window of a held-out clip said +0.19 s): say "unknown".
            av_offset_s=sync.offset_s if self._reportable(sync) else None,
            av_sync_confidence=sync.confidence if sync is not None else None,
            **(self.tags(MAX_TAGS) if self.tags is not None else {}),
            words=self.words,
            languages={code: round(s, 3) for code, s in sorted(self.language_s.items(), key=lambda kv: -kv[1])},
            source_state=self.source_state,
            outages=self.outages,
            outage_s=round(self.outage_s, 3),
        )
