"""What a stream says about its source's changes: ``SourceChange`` (from the decoder or a live
source) to records. An outage's return and a timestamp jump are ``Discontinuity`` records; a source
going down, each reconnect attempt and giving up are ``SourceState`` records."""

from __future__ import annotations

from pipeline.core.media import SourceChange
from pipeline.output.records import Discontinuity, Record, SourceState

# The summary's source_state after each kind of change.
STATE_AFTER = {"down": "down", "retrying": "backoff", "failed": "failed", "closed": "closed",
               "resumed": "streaming", "pts_jump": None}


def source_record(stream_id: str, change: SourceChange) -> Record | None:
    """The record of ``change``; None for a stop, which stream_end reports."""
    if change.kind in ("resumed", "pts_jump"):
        resume_s = change.resume_s if change.resume_s is not None else change.at_s
        return Discontinuity(stream_id, change.reason, change.detail, round(change.at_s, 3), round(resume_s, 3),
                             round(max(0.0, resume_s - change.at_s), 3), change.attempt, round(change.down_s, 3),
                             round(change.jump_s, 3), at=change.wall_s)
    if change.kind in ("down", "retrying", "failed"):
        return SourceState(stream_id, change.kind, change.reason, change.detail, round(change.at_s, 3),
                           change.attempt, round(change.down_s, 3), at=change.wall_s)
    return None
