"""Per-stream summary: what happened so far, emitted every ``records.summary_every_s``
of stream time and once more, final, at the end of the stream."""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable

from pipeline.output.records import Event, Summary
from pipeline.stream.sync_tracker import SyncTracker

MAX_TAGS = 10  # classes listed in audio_tags and in visual_tags

# Labels whose total duration the summary reports, by summary field.
_DURATION_FIELDS = {"silence": "silence_s", "black_video": "black_s", "frozen_video": "frozen_s",
                    "speech": "speech_s"}


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
        self.events: list[Event] = []
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

    def add_event(self, event: Event) -> None:
        self.counts[event.label] += 1
        if event.label in _DURATION_FIELDS:
            self.durations_s[_DURATION_FIELDS[event.label]] += max(0.0, event.end_s - event.start_s)
        self.events.append(event)

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
        top = sorted(self.events, key=lambda e: (-e.confidence, e.start_s))[: self.top_moments]
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
            top_moments=[
                {"label": e.label, "start_s": e.start_s, "end_s": e.end_s,
                 "confidence": e.confidence, "event_id": e.event_id}
                for e in sorted(top, key=lambda e: e.start_s)
            ],
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
