"""Alignment and windowing: where one stream's modalities are cut into aligned windows.

Named concepts (as in Bytewax windowing and MediaPipe timestamp bounds):
clock     -- every time is seconds on the stream clock, given by the caller; nothing here
             counts frames or reads a wall clock.
window    -- ``WindowSpec``: window i covers [i*hop_s, i*hop_s + window_s).
watermark -- per modality, no future row has ``t_s < watermark_s``; a window is emitted only
             once every modality is settled for it (see ``WindowAligner``).
late data -- rows arriving for windows already decided; counted and dropped.
Pure Python + numpy, so it runs in a unit test with no Ray and no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Literal

import numpy as np

MissingReason = Literal["absent", "lagging", "no_data"]


class AlignmentError(ValueError):
    """A caller broke the aligner's contract; the message names the stream and the reason."""


@dataclass(frozen=True)
class WindowSpec:
    """Window i covers [start_s(i), end_s(i)) = [i*hop_s, i*hop_s + window_s), from 0.

    0 < hop_s <= window_s: windows tile or overlap, so every t_s >= 0 is in at least one.
    Bounds are rounded to whole microseconds so that windows meet exactly where they should
    (in floats, 13 * 0.7 != 12 * 0.7 + 0.7, which would leave a row in no window).
    """

    window_s: float
    hop_s: float

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and 0 < self.hop_s <= self.window_s):
            raise ValueError(f"need 0 < hop_s <= window_s, got window_s={self.window_s} hop_s={self.hop_s}")

    def start_s(self, index: int) -> float:
        return round(index * self.hop_s, 6)

    def end_s(self, index: int) -> float:
        return round(index * self.hop_s + self.window_s, 6)

    def indices_containing(self, t_s: float) -> range:
        """Ascending indices i with start_s(i) <= t_s < end_s(i); empty for t_s < 0."""
        if t_s < 0:
            return range(0)
        # floor() only guesses near a boundary; the loops make the answer agree exactly with
        # start_s/end_s, the same floats that cut rows into windows.
        last = math.floor(t_s / self.hop_s)
        while self.start_s(last) > t_s:
            last -= 1
        while self.start_s(last + 1) <= t_s:
            last += 1
        first = max(0, math.floor((t_s - self.window_s) / self.hop_s) + 1)
        while first > 0 and self.end_s(first - 1) > t_s:
            first -= 1
        while self.end_s(first) <= t_s:
            first += 1
        return range(first, last + 1)


@dataclass
class TimedRows:
    """Rows of one modality. t_s: [N] float64 stream-clock seconds of each row.

    columns: name -> array with first dim N ("tokens" [N, D], a per-token signal [N]).
    Selections apply to t_s and every column alike: columns travel with their rows.
    """

    t_s: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.t_s = np.asarray(self.t_s, dtype=np.float64)
        self.columns = {name: np.asarray(col) for name, col in self.columns.items()}
        if self.t_s.ndim != 1:
            raise ValueError(f"t_s must be 1-D, got shape {self.t_s.shape}")
        for name, col in self.columns.items():
            if col.ndim == 0 or col.shape[0] != self.t_s.shape[0]:
                raise ValueError(f"column {name!r} has shape {col.shape}, t_s has {self.t_s.shape[0]} rows")

    def __len__(self) -> int:
        return int(self.t_s.shape[0])

    def __getitem__(self, which: np.ndarray | slice) -> TimedRows:
        """Rows picked by a boolean mask, an index array (both copy) or a slice (a view)."""
        return TimedRows(self.t_s[which], {name: col[which] for name, col in self.columns.items()})

    @staticmethod
    def concat(parts: Iterable[TimedRows]) -> TimedRows:
        """All rows of ``parts`` in order; the parts must have the same column names."""
        parts = list(parts)
        names = parts[0].columns.keys()
        if any(p.columns.keys() != names for p in parts):
            raise ValueError(f"cannot concat rows with columns {[sorted(p.columns) for p in parts]}")
        return TimedRows(np.concatenate([p.t_s for p in parts]),
                         {name: np.concatenate([p.columns[name] for p in parts]) for name in names})


@dataclass
class ModalityState:
    """One modality of one stream: ``rows`` buffered for undecided windows, sorted by t_s;
    ``watermark_s`` (no future row is earlier; only rises); ``done`` (ended, or absent from
    the media); ``delivered`` (ever added a row: tells "absent" from "no_data")."""

    rows: TimedRows | None = None
    watermark_s: float = -math.inf
    done: bool = False
    delivered: bool = False
    last_t_s: float = -math.inf  # latest row added, to enforce time order across adds


@dataclass
class AlignedWindow:
    """One window of one stream. rows[m] is None exactly when m is in ``missing`` (masked);
    present rows are copies that the caller owns."""

    stream_id: str
    index: int
    start_s: float
    end_s: float
    rows: dict[str, TimedRows | None]
    missing: dict[str, MissingReason]

    @property
    def partial(self) -> bool:
        return bool(self.missing)


@dataclass
class AlignStats:
    """late_rows: rows that missed a decided window; masked_lagging: emitted windows in
    which the modality was masked as lagging. Both per modality."""

    windows_emitted: int = 0
    partial_windows: int = 0
    late_rows: dict[str, int] = field(default_factory=dict)
    masked_lagging: dict[str, int] = field(default_factory=dict)


class WindowAligner:
    """Cuts one stream's modalities into aligned windows, each decided once, in index order.

    A modality is settled for window i when it is done, or its watermark_s >= end_s(i), or
    it is LAGGING: the leading live watermark (max over modalities not done) is more than
    max_skew_s past end_s(i) while its own is still short of end_s(i); a lagging modality is
    masked in i even if it has rows there. Window i is ready once every modality is settled;
    it is emitted if an unmasked modality has rows in it, else skipped silently (before the
    media starts, a gap in every modality). Adding rows raises the modality's watermark to
    its last row's time, since rows come in time order.
    """

    def __init__(self, stream_id: str, spec: WindowSpec, max_skew_s: float,
                 modalities: tuple[str, ...] = ("video", "audio")) -> None:
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"{stream_id}: modalities must be distinct and non-empty, got {modalities}")
        self.stream_id, self.spec, self.max_skew_s = stream_id, spec, float(max_skew_s)
        self.states = {name: ModalityState() for name in modalities}
        self.stats = AlignStats(late_rows=dict.fromkeys(modalities, 0),
                                masked_lagging=dict.fromkeys(modalities, 0))
        self._next_index = 0  # every window below it is decided: emitted or skipped

    def add(self, modality: str, rows: TimedRows) -> None:
        """Buffer rows of one modality, in time order within and across adds. A row that
        missed a decided window containing it is late (stats.late_rows); it is dropped
        unless an undecided overlapping window still contains it."""
        state = self._state(modality)
        if state.done:
            raise AlignmentError(f"{self.stream_id}: {modality} rows added after finish()")
        if len(rows) == 0:
            return
        t_s = rows.t_s
        if t_s[0] < state.last_t_s or np.any(np.diff(t_s) < 0):
            raise AlignmentError(f"{self.stream_id}: {modality} rows out of time order near t={t_s[0]:.3f}s")
        state.delivered, state.last_t_s = True, float(t_s[-1])
        state.watermark_s = max(state.watermark_s, state.last_t_s)
        if self._next_index > 0:  # decided windows tile [0, end_s(next - 1)) as hop_s <= window_s
            decided_end_s = self.spec.end_s(self._next_index - 1)
            self.stats.late_rows[modality] += int(np.count_nonzero((t_s >= 0) & (t_s < decided_end_s)))
        keep = t_s >= self.spec.start_s(self._next_index)  # also drops t < 0: in no window
        rows = rows if keep.all() else rows[keep]
        if len(rows):
            state.rows = rows if state.rows is None else TimedRows.concat([state.rows, rows])

    def advance(self, modality: str, watermark_s: float) -> None:
        """Promise that no future row of ``modality`` has t_s < watermark_s. Never lowers it."""
        state = self._state(modality)
        state.watermark_s = max(state.watermark_s, float(watermark_s))

    def finish(self, modality: str) -> None:
        """The modality ended, or is absent from the media (then it never added a row)."""
        self._state(modality).done = True

    def pop_ready(self) -> list[AlignedWindow]:
        """Decide every ready window in index order; return the emitted ones."""
        emitted = []
        # With nothing buffered there is nothing to emit; deciding empty windows anyway could
        # loop for ever (a watermark of +inf), so wait for the next row.
        while (first_t_s := self._earliest_buffered_s()) is not None:
            index = self._next_index
            # Windows ending at or before the earliest buffered row are empty: skip them in one
            # step. Readiness is monotone in the index, so checking the last one is enough.
            first_with_rows = self.spec.indices_containing(first_t_s).start
            if first_with_rows > index and self._lagging_if_ready(first_with_rows - 1) is not None:
                index = self._next_index = first_with_rows
            lagging = self._lagging_if_ready(index)
            if lagging is None:
                break
            window = self._cut(index, lagging)
            self._next_index = index + 1
            self._drop_rows_before(self.spec.start_s(index + 1))  # keeps the buffer O(window)
            if window is not None:
                emitted.append(window)
        return emitted

    @property
    def next_index(self) -> int:
        """Every window below this index is decided (emitted or skipped)."""
        return self._next_index

    def buffered_rows(self, modality: str | None = None) -> int:
        """Rows held in the buffer, of one modality or of all."""
        states = self.states.values() if modality is None else [self._state(modality)]
        return sum(len(s.rows) for s in states if s.rows is not None)

    @property
    def drained(self) -> bool:
        """Every modality is done and every window with rows was emitted: nothing more comes."""
        return all(s.done for s in self.states.values()) and self.buffered_rows() == 0

    def _state(self, modality: str) -> ModalityState:
        if modality not in self.states:
            raise AlignmentError(f"{self.stream_id}: unknown modality {modality!r}")
        return self.states[modality]

    def _earliest_buffered_s(self) -> float | None:
        return min((float(s.rows.t_s[0]) for s in self.states.values() if s.rows is not None and len(s.rows)),
                   default=None)

    def _lagging_if_ready(self, index: int) -> set[str] | None:
        """None while some modality may still add rows to window ``index``; else the lagging ones."""
        end_s = self.spec.end_s(index)
        lead_s = max((s.watermark_s for s in self.states.values() if not s.done), default=-math.inf)
        lagging = set()
        for name, state in self.states.items():
            if state.done or state.watermark_s >= end_s:
                continue
            if lead_s - end_s <= self.max_skew_s:
                return None
            lagging.add(name)
        return lagging

    def _cut(self, index: int, lagging: set[str]) -> AlignedWindow | None:
        start_s, end_s = self.spec.start_s(index), self.spec.end_s(index)
        rows: dict[str, TimedRows | None] = dict.fromkeys(self.states)
        missing: dict[str, MissingReason] = {}
        for name, state in self.states.items():
            if name in lagging:
                missing[name] = "lagging"
            elif state.done and not state.delivered:
                missing[name] = "absent"
            else:
                t_s = state.rows.t_s if state.rows is not None else np.empty(0)
                lo, hi = np.searchsorted(t_s, [start_s, end_s])
                if hi > lo:  # an index array copies: windows overlap and the buffer moves on
                    rows[name] = state.rows[np.arange(lo, hi)]
                else:
                    missing[name] = "no_data"
        if all(r is None for r in rows.values()):
            return None
        self.stats.windows_emitted += 1
        self.stats.partial_windows += bool(missing)
        for name in lagging:
            self.stats.masked_lagging[name] += 1
        return AlignedWindow(self.stream_id, index, start_s, end_s, rows, missing)

    def _drop_rows_before(self, start_s: float) -> None:
        for state in self.states.values():
            if state.rows is not None:
                state.rows = state.rows[int(np.searchsorted(state.rows.t_s, start_s)):]
