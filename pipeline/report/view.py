"""One stream's records into what its section of the page draws (a JSON-ready ``StreamView``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pipeline.report.curves import build_curves
from pipeline.report.lanes import GROUPS, build_lanes
from pipeline.report.load import StreamRecords
from pipeline.report.thumbnails import Thumbnail

TOP_TAGS = 5
MAX_TRANSCRIPTS = 5000  # segments listed per stream (about 5 hours of speech)


@dataclass
class StreamView:
    id: str
    uri: str
    duration_s: float  # the time axis: the longest of what the records say the stream lasted
    status: str
    header: list[tuple[str, str]]  # (row heading, value) for the header table
    counts: dict[str, int]  # events per label in the records
    lanes: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    sync: dict[str, Any]  # periodic A/V offsets [processed_s, offset_s | None, confidence | None], final
    transcripts: list[list[Any]]  # [start_s, end_s, text, language, transcript_id]
    errors: list[dict[str, Any]]
    thumbs: list[list[Any]] = field(default_factory=list)  # [time_s, jpeg base64, event_id]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        # Shallow: the fields hold plain JSON values already (dataclasses.asdict would deep-copy them all).
        return {f.name: getattr(self, f.name) for f in fields(self)}


def duration_s(stream: StreamRecords) -> float:
    candidates = [float(e["end_s"]) for e in stream.events] + [float(t["end_s"]) for t in stream.transcripts]
    candidates += [float(s["processed_s"]) for s in stream.summaries]
    for rec, key in ((stream.start, "duration_s"), (stream.end, "processed_s")):
        if rec and isinstance(rec.get(key), (int, float)):
            candidates.append(float(rec[key]))
    for s in stream.signals:
        longest = max((len(v["mean"]) for v in s.values() if isinstance(v, dict) and isinstance(v.get("mean"), list)),
                      default=0)
        candidates.append(float(s["start_s"]) + float(s["step_s"]) * longest)
    return max([c for c in candidates if c == c] + [1.0])  # NaN-free, at least 1 s


def _num(value: Any) -> float | None:
    """A finite number, or None: records from other writers may hold anything where a number goes."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _fmt(value: Any, spec: str) -> str:
    number = _num(value)
    return "?" if number is None else format(number, spec)


def _summary(stream: StreamRecords) -> dict[str, Any] | None:
    finals = [s for s in stream.summaries if s.get("final")]
    return finals[-1] if finals else (stream.summaries[-1] if stream.summaries else None)


def _tags(tags: Any) -> str:
    if not isinstance(tags, list) or not tags:
        return "-"
    return ", ".join(f"{t.get('label')} ({_fmt(t.get('seconds'), 'g')} s)"
                     for t in tags[:TOP_TAGS] if isinstance(t, dict))


def _offset(summary: dict[str, Any] | None) -> str:
    if not summary or _num(summary.get("av_sync_confidence")) is None:
        return "no estimate"
    confidence = f"confidence {_fmt(summary['av_sync_confidence'], '.2f')}"
    offset_s = _num(summary.get("av_offset_s"))  # positive: audio late
    if offset_s is None:
        return f"unknown ({confidence}, below the reporting threshold)"
    direction = "audio late" if offset_s > 0 else "audio early" if offset_s < 0 else "in sync"
    return f"{offset_s * 1000:+.0f} ms, {direction} ({confidence})"


def _header(stream: StreamRecords, counts: dict[str, int], duration: float) -> list[tuple[str, str]]:
    start, end, summary = stream.start or {}, stream.end or {}, _summary(stream)
    rows = [("source", str(start.get("uri", "(no stream_start record)"))),
            ("duration", f"{_fmt(start['duration_s'], '.1f')} s" if _num(start.get("duration_s")) is not None
             else f"unknown (axis: {duration:.1f} s)")]
    if end:
        rows.append(("status", f"{end.get('status')}" + (f": {end['reason']}" if end.get("reason") else "")
                     + f"; {_fmt(end.get('processed_s'), '.1f')} s processed in {_fmt(end.get('wall_s'), '.1f')} s"))
    if summary:
        kind = "final" if summary.get("final") else f"periodic, at {summary['processed_s']:.0f} s"
        rows += [("speed", f"{_fmt(summary.get('speed_x_realtime'), 'g')}x realtime ({kind} summary)"),
                 ("audio tags", _tags(summary.get("audio_tags"))), ("visual tags", _tags(summary.get("visual_tags"))),
                 ("languages", ", ".join(f"{k} ({_fmt(v, 'g')} s)" for k, v in _dict(summary.get("languages")).items())
                  or "-"), ("words", str(summary.get("words", 0))), ("A/V offset", _offset(summary))]
    for key in ("video", "audio"):
        info = start.get(key)
        rows.append((key, ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
                     if isinstance(info, dict) else "none"))
    rows.append(("events", f"{sum(counts.values())}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))))
    if end.get("decode_errors"):
        rows.append(("decode errors", str(end["decode_errors"])))
    return rows


def _sync(stream: StreamRecords) -> dict[str, Any]:
    points = [[round(float(s["processed_s"]), 3), _num(s.get("av_offset_s")), _num(s.get("av_sync_confidence"))]
              for s in stream.summaries if not s.get("final")]
    final = next((s for s in reversed(stream.summaries) if s.get("final")), None)
    return {"points": sorted(points, key=lambda p: p[0]), "final": None if final is None else
            {"offset_s": _num(final.get("av_offset_s")), "confidence": _num(final.get("av_sync_confidence"))}}


def build_view(stream: StreamRecords, budget: int, thumbs: list[Thumbnail], notes: list[str]) -> StreamView:
    counts: dict[str, int] = {}
    for e in stream.events:
        counts[e["label"]] = counts.get(e["label"], 0) + 1
    duration = duration_s(stream)
    lanes = [{"group": lane.group, "label": lane.label, "detector": lane.detector, "count": lane.count,
              "binned": lane.binned, "instants": lane.instants, "items": lane.items}
             for lane in build_lanes(stream.events, duration, budget)]
    transcripts = sorted(([round(float(t["start_s"]), 3), round(float(t["end_s"]), 3), t["text"].strip(),
                           str(t.get("language", "")), str(t.get("transcript_id", ""))] for t in stream.transcripts),
                         key=lambda t: t[0])
    if len(transcripts) > MAX_TRANSCRIPTS:
        notes = [*notes, f"listed the first {MAX_TRANSCRIPTS} of {len(transcripts)} transcript segments"]
        transcripts = transcripts[:MAX_TRANSCRIPTS]
    errors = [{k: e.get(k) for k in ("stage", "reason", "uri", "fatal", "at")} for e in stream.errors]
    start = stream.start or {}
    return StreamView(id=stream.stream_id, uri=str(start.get("uri", "")), duration_s=round(duration, 3),
                      status=str((stream.end or {}).get("status", "no stream_end")),
                      header=_header(stream, counts, duration), counts=counts, lanes=lanes,
                      curves=[asdict(c) for c in build_curves(stream.signals)], sync=_sync(stream),
                      transcripts=transcripts, errors=errors,
                      thumbs=[[t.time_s, t.jpeg_b64, t.event_id] for t in thumbs], notes=notes)


def group_titles() -> dict[str, str]:
    return dict(GROUPS)
