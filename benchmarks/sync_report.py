"""The tables ``benchmarks.eval_av_sync`` prints: one row per stream, then rates per shift."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass
class Outcome:
    """One shifted copy's result: the final summary's whole-stream estimate (None: no estimate)."""

    clip: str
    shift_s: float
    status: str
    offset_s: float | None
    confidence: float | None
    desync_events: int


def _number(value: float | None, spec: str) -> str:
    return "null" if value is None else format(value, spec)


def print_streams(outcomes: list[Outcome], held_out: set[str], shifts_s: tuple[float, ...]) -> None:
    """One row per stream, by shift (in ``shifts_s`` order) then clip."""
    print(f"\n{'shift s':>7}  {'clip':<26} {'status':<7} {'offset s':>8} {'conf':>6} {'|err| s':>7} {'desync':>6}")
    for o in sorted(outcomes, key=lambda o: (shifts_s.index(o.shift_s), o.clip)):
        error = None if o.offset_s is None else abs(o.offset_s - o.shift_s)
        name = o.clip + (" (held out)" if o.clip in held_out else "")
        print(f"{o.shift_s:+7.2f}  {name:<26} {o.status:<7} {_number(o.offset_s, '+8.3f')} "
              f"{_number(o.confidence, '6.3f')} {_number(error, '7.3f')} {o.desync_events:6d}")


def print_rates(outcomes: list[Outcome], groups: dict[str, set[str]], shifts_s: tuple[float, ...],
                threshold_s: float) -> None:
    """Per shift and group of clip names: error of the estimates, av_desync rate, missing estimates."""
    print(f"\nper shift (av_desync above |offset| {threshold_s:g} s; at shift 0 its rate is the false-alarm rate)")
    print(f"{'shift s':>7}  {'clips':<22} {'n':>2} {'mean|err|':>9} {'median':>7} {'av_desync':>9} {'no est.':>7}")
    for shift in shifts_s:
        for group, names in groups.items():
            rows = [o for o in outcomes if o.shift_s == shift and o.clip in names]
            if not rows:
                continue
            errors = [abs(o.offset_s - shift) for o in rows if o.offset_s is not None]
            mean_s = statistics.fmean(errors) if errors else None
            median_s = statistics.median(errors) if errors else None
            detected = sum(o.desync_events > 0 for o in rows)
            print(f"{shift:+7.2f}  {group:<22} {len(rows):2d} {_number(mean_s, '9.3f')} {_number(median_s, '7.3f')} "
                  f"{detected:>3d}/{len(rows):<2d} {detected / len(rows):4.0%} {len(rows) - len(errors):7d}")
