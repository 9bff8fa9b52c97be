"""Events into lanes: one lane per (detector kind, label), each either its events or, when it has too
many to draw and to embed, their counts in time bins.

Why bins: a 1-hour stream can hold tens of thousands of loud onsets or tag spans; drawing each costs
the browser and embedding each (with its attributes, for the detail panel) costs megabytes. A lane
with more than ``LANE_MAX_EVENTS`` events is binned, and so are the largest lanes of a stream until its
drawn events fit the stream's budget, which shrinks with the number of streams in the file so that
the file stays bounded.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

LANE_MAX_EVENTS = 2000  # more than this in one lane: binned
FILE_MAX_EVENTS = 40000  # events drawn (and embedded) in one file, shared out among its streams
STREAM_MIN_EVENTS = 500  # ... but never fewer than this per stream
N_BINS = 400  # bins across a binned lane (the page is about 1000 px wide)
ATTRIBUTES_MAX_CHARS = 800  # an event's attributes beyond this are summarised, not embedded

# Group (detector kind) of each lane, in page order, with its heading.
GROUPS = {"problems": "Problems", "video": "Video signals", "audio": "Audio signals", "speech": "Speech",
          "scenes": "Scenes", "audio_tags": "Audio tags (AudioSet)", "visual_tags": "Visual tags (ImageNet)",
          "av": "A/V events", "faces": "Faces", "other": "Other detectors"}
_BY_DETECTOR = {"scene_cut": "video", "black_video": "video", "frozen_video": "video", "motion_burst": "video",
                "silence": "audio", "loud_onset": "audio", "speech": "speech", "scene_tags": "scenes",
                "sound_tags": "audio_tags", "visual_tags": "visual_tags", "faces": "faces",
                "av_concepts": "av", "av_sync": "av"}
_LABEL_ORDER = ["scene_cut", "black_video", "frozen_video", "motion_burst", "silence", "loud_onset", "speech"]


def group_of(event: dict[str, Any]) -> str:
    label, detector = event["label"], str(event.get("detector", ""))
    if "outage" in label or "discontinuity" in label:
        return "problems"
    if label in ("av_event", "av_desync"):
        return "av"
    return _BY_DETECTOR.get(detector, "other")


@dataclass
class Lane:
    group: str
    label: str
    detector: str  # the lane's detector (the first seen); an event from another one names its own
    count: int  # events of this label in the records: drawn or binned
    binned: bool = False
    instants: bool = False  # every event an instant (start_s == end_s): drawn as ticks
    items: list[Any] = field(default_factory=list)  # events as dicts, or bins as [start_s, end_s, count, max_conf]


def compact_event(event: dict[str, Any], lane_detector: str) -> dict[str, Any]:
    """What the page needs of an event: its times, confidence, id and attributes (bounded)."""
    start_s = float(event["start_s"])
    item = {"s": round(start_s, 3), "e": round(max(start_s, float(event["end_s"])), 3),
            "c": _number(event.get("confidence")), "id": str(event.get("event_id", ""))}
    attributes = event.get("attributes") if isinstance(event.get("attributes"), dict) else {}
    small = len(attributes) <= 16 and all(isinstance(v, (int, float, bool)) or v is None
                                          or isinstance(v, str) and len(v) <= 32 for v in attributes.values())
    text = "" if small else json.dumps(attributes, separators=(",", ":"), default=str)  # measured only if it may be big
    if len(text) > ATTRIBUTES_MAX_CHARS:  # keep its plain values; name what was left out
        kept = {k: v for k, v in attributes.items() if isinstance(v, (str, int, float, bool)) or v is None}
        attributes = {**kept, "_not_embedded": f"{len(text)} characters of attributes; see the JSONL"}
    if attributes:
        item["a"] = attributes
    if event.get("detector") and event["detector"] != lane_detector:
        item["d"] = str(event["detector"])
    return item


def _number(value: Any) -> float | None:
    return round(float(value), 3) if isinstance(value, (int, float)) and math.isfinite(value) else None


def bin_events(events: list[dict[str, Any]], duration_s: float, n_bins: int = N_BINS) -> list[list[float]]:
    """[start_s, end_s, count, max_confidence] of each non-empty bin; an event counts in its start's bin."""
    width_s = max(duration_s, 1e-3) / n_bins
    counts: dict[int, int] = defaultdict(int)
    peaks: dict[int, float] = defaultdict(float)
    for event in events:
        i = min(n_bins - 1, max(0, int(float(event["start_s"]) / width_s)))
        counts[i] += 1
        peaks[i] = max(peaks[i], _number(event.get("confidence")) or 0.0)
    return [[round(i * width_s, 3), round((i + 1) * width_s, 3), counts[i], peaks[i]] for i in sorted(counts)]


def stream_budget(n_streams: int) -> int:
    """Events one stream may draw individually, given how many streams the file has."""
    return max(STREAM_MIN_EVENTS, FILE_MAX_EVENTS // max(1, n_streams))


def _lane_order(lane: Lane) -> tuple:
    groups = list(GROUPS)
    fixed = _LABEL_ORDER.index(lane.label) if lane.label in _LABEL_ORDER else len(_LABEL_ORDER)
    # Tags most frequent first (what a stream is about); built-in detectors in a fixed order.
    return groups.index(lane.group), fixed, -lane.count if lane.group.endswith("tags") else 0, lane.label


def build_lanes(events: list[dict[str, Any]], duration_s: float, budget: int) -> list[Lane]:
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_key[(group_of(event), event["label"])].append(event)
    lanes = []
    for (group, label), members in by_key.items():
        members.sort(key=lambda e: float(e["start_s"]))
        lane = Lane(group, label, str(members[0].get("detector", "")), len(members),
                    instants=all(float(e["end_s"]) <= float(e["start_s"]) for e in members))
        lanes.append(lane)
        by_key[(group, label)] = members
    drawn = sum(lane.count for lane in lanes)
    # The largest lanes are binned first: they cost the most and their single events matter least.
    for lane in sorted(lanes, key=lambda lane: -lane.count):
        if lane.count > LANE_MAX_EVENTS or drawn > budget:
            lane.binned = True
            drawn -= lane.count
    for lane in lanes:
        members = by_key[(lane.group, lane.label)]
        lane.items = (bin_events(members, duration_s) if lane.binned
                      else [compact_event(e, lane.detector) for e in members])
    return sorted(lanes, key=_lane_order)
