"""Read an avfuse JSONL file into per-stream records, checking just what the report relies on.

A file is avfuse records when its first record line is a JSON object with a ``type`` and an
``avfuse.*`` ``schema``; otherwise (a PNG, a text file, other JSON) ``NotRecordsError``. Past that
first line the report is lenient, because a partial picture beats none: a last line cut short (a
writer that was stopped) is left out, other lines that are no avfuse record and records of a known
type without the fields drawn are skipped, and records of unknown (future) types are counted by
type; each of these becomes a note on the page.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The types the page draws (window records are known but not drawn: their embeddings are not for eyes).
KNOWN_TYPES = frozenset({"stream_start", "event", "summary", "transcript", "stream_end", "error", "window",
                         "signals"})
_NUMBERS = {"event": ("start_s", "end_s"), "transcript": ("start_s", "end_s"), "summary": ("processed_s",),
            "signals": ("start_s", "step_s")}
_STRINGS = {"event": ("label",), "transcript": ("text",)}
_BINARY_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"PK\x03\x04", b"\x1aE\xdf\xa3", b"%PDF")


class NotRecordsError(ValueError):
    """The file is not avfuse JSONL; the message is one line for the user."""


@dataclass
class StreamRecords:
    """Everything one stream_id has in the file, in file order."""

    stream_id: str
    start: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    transcripts: list[dict[str, Any]] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)
    signals: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    windows: int = 0


@dataclass
class LoadedRecords:
    path: Path
    streams: dict[str, StreamRecords]  # in order of first appearance
    records: int = 0  # avfuse records read, drawn or not
    skipped_types: Counter = field(default_factory=Counter)  # unknown record types and how many of each
    malformed: int = 0  # records of a known type lacking what the report draws
    foreign_lines: list[int] = field(default_factory=list)  # line numbers that are no avfuse record
    truncated_last_line: bool = False

    def notes(self) -> list[str]:
        """One sentence per thing left out, for the page (and the command's stderr)."""
        notes = []
        if self.skipped_types:
            n = sum(self.skipped_types.values())
            notes.append(f"skipped {n} record{'s' * (n != 1)} of types: {', '.join(sorted(self.skipped_types))}")
        if self.malformed:
            notes.append(f"skipped {self.malformed} malformed record{'s' * (self.malformed != 1)} "
                         "(a known type without the fields drawn)")
        if self.foreign_lines:
            lines = ", ".join(map(str, self.foreign_lines[:5])) + (", ..." if len(self.foreign_lines) > 5 else "")
            notes.append(f"skipped {len(self.foreign_lines)} line(s) that are no avfuse record (line {lines})")
        if self.truncated_last_line:
            notes.append("ignored the last line: it is cut short (the writer was probably stopped mid-record)")
        return notes


def is_record(obj: Any) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("type"), str)
            and isinstance(obj.get("schema"), str) and obj["schema"].startswith("avfuse."))


def _well_formed(rec: dict[str, Any]) -> bool:
    if not isinstance(rec.get("stream_id"), str) or not rec["stream_id"]:
        return False
    kind = rec["type"]
    numbers_ok = all(isinstance(rec.get(k), (int, float)) and not isinstance(rec.get(k), bool)
                     and math.isfinite(rec[k]) for k in _NUMBERS.get(kind, ()))
    return numbers_ok and all(isinstance(rec.get(k), str) for k in _STRINGS.get(kind, ()))


def _lines(path: Path) -> tuple[list[tuple[int, str]], bool]:
    """Non-blank lines with their 1-based numbers, and whether the file ends with a newline."""
    data = path.read_bytes()
    if data.startswith(_BINARY_MAGIC) or b"\x00" in data[:4096]:
        raise NotRecordsError(f"{path} is not avfuse JSONL records (binary data)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NotRecordsError(f"{path} is not avfuse JSONL records (not UTF-8 text)") from None
    lines = [(i, line) for i, line in enumerate(text.split("\n"), 1) if line.strip()]
    return lines, text.endswith("\n")


def load_records(path: str | Path) -> LoadedRecords:
    """Read ``path``; FileNotFoundError when it is missing, NotRecordsError when it is no avfuse JSONL."""
    path = Path(path)
    lines, ends_with_newline = _lines(path)
    out = LoadedRecords(path, {})
    for pos, (number, line) in enumerate(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not is_record(rec):
            if pos == 0 and not (len(lines) == 1 and not ends_with_newline and line.lstrip().startswith("{")):
                raise NotRecordsError(f"{path} is not avfuse JSONL records (line {number} is no JSON object "
                                      "with an avfuse.* schema and a type)")
            if pos == len(lines) - 1 and not ends_with_newline and rec is None:
                out.truncated_last_line = True
            else:
                out.foreign_lines.append(number)
            continue
        out.records += 1
        _add(out, rec)
    if not out.records:
        raise NotRecordsError(f"{path} is not avfuse JSONL records ({'no line is one' if lines else 'empty'})")
    return out


def _add(out: LoadedRecords, rec: dict[str, Any]) -> None:
    kind = rec["type"]
    if kind not in KNOWN_TYPES:
        out.skipped_types[kind] += 1
        return
    if not _well_formed(rec):
        out.malformed += 1
        return
    stream = out.streams.get(rec["stream_id"])
    if stream is None:
        stream = out.streams[rec["stream_id"]] = StreamRecords(rec["stream_id"])
    if kind == "stream_start":
        stream.start = rec
    elif kind == "stream_end":
        stream.end = rec
    elif kind == "window":
        stream.windows += 1
    else:
        {"event": stream.events, "transcript": stream.transcripts, "summary": stream.summaries,
         "signals": stream.signals, "error": stream.errors}[kind].append(rec)
