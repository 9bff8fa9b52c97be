"""``render_report``: records file (+ optional source media) -> one self-contained HTML file; and
``main``, the command on its own (``python -m pipeline.report.render``; ``avfuse report`` is the same
parser and run, from ``pipeline.report.command``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.report.lanes import stream_budget
from pipeline.report.load import LoadedRecords, load_records
from pipeline.report.page import page
from pipeline.report.thumbnails import match_media, media_files, scene_times, take_thumbnails
from pipeline.report.view import build_view, group_titles

OPEN_FIRST = 3  # streams drawn on load; the others when opened


@dataclass
class ReportResult:
    out_path: Path
    streams: int
    size_bytes: int
    thumbnails: int
    notes: list[str] = field(default_factory=list)  # about the file, and about media per stream
    elapsed_s: float = 0.0


def default_out_path(records_path: Path) -> Path:
    """Next to the records: replay.jsonl -> replay.html (never the records file itself)."""
    out = records_path.with_suffix(".html")
    return out if out != records_path else records_path.with_suffix(".report.html")


def _thumbnails(loaded: LoadedRecords, media: list[Path]) -> tuple[dict[str, list], dict[str, list[str]]]:
    files = media_files(media)
    thumbs: dict[str, list] = {}
    notes: dict[str, list[str]] = {}
    for stream_id, stream in loaded.streams.items():
        uri = (stream.start or {}).get("uri")
        path = match_media(stream_id, uri, files) if files else None
        if files and path is None:
            notes[stream_id] = [f"no media file given matches this stream ({uri or stream_id}): no thumbnails"]
        if path is None:
            continue
        try:
            thumbs[stream_id] = take_thumbnails(path, scene_times(stream.events), (stream.start or {}).get("video"))
        except Exception as exc:  # noqa: BLE001 - PyAV raises many kinds; a report without pictures is still one
            notes[stream_id] = [f"thumbnails from {path} failed: {type(exc).__name__}: {str(exc)[:200]}"]
    return thumbs, notes


def render_report(records_path: str | Path, media: list[str | Path] | tuple = (),
                  out_path: str | Path | None = None) -> ReportResult:
    """Write the report; raises FileNotFoundError (records or media missing) or NotRecordsError."""
    started = time.perf_counter()
    records_path = Path(records_path)
    media_paths = [Path(m) for m in media]
    for m in media_paths:
        if not m.exists():
            raise FileNotFoundError(f"no such media file or folder: {m}")
    loaded = load_records(records_path)
    thumbs, media_notes = _thumbnails(loaded, media_paths)
    budget = stream_budget(len(loaded.streams))
    views = [build_view(s, budget, thumbs.get(sid, []), media_notes.get(sid, [])).to_json()
             for sid, s in loaded.streams.items()]
    n = len(views)
    data = {"version": 1, "open_first": OPEN_FIRST, "groups": group_titles(), "streams": views}
    subtitle = (f"{records_path.name}: {loaded.records} records, {n} stream{'s' * (n != 1)}; "
                f"rendered {time.strftime('%Y-%m-%d %H:%M:%S')}")
    text = page(f"avfuse report: {records_path.name}", subtitle, loaded.notes(), data)
    out_path = Path(out_path) if out_path else default_out_path(records_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, out_path)  # a reader never sees half a page
    return ReportResult(out_path, n, out_path.stat().st_size, sum(len(t) for t in thumbs.values()),
                        loaded.notes() + [f"{sid}: {m}" for sid, ms in media_notes.items() for m in ms],
                        time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    """``avfuse report`` on its own (``python -m pipeline.report.render``); usage errors exit 2 (argparse)."""
    from pipeline.report.command import DESCRIPTION, add_arguments, run_report

    parser = argparse.ArgumentParser(prog="avfuse report", description=DESCRIPTION)
    add_arguments(parser)
    return run_report(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
