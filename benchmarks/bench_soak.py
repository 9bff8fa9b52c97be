"""Soak: memory and scrape time of `avfuse run` over hours of media on ONE stream.

A benchmark, not a unit test. Writes ``--hours`` of media as one file (one stream: memory
that grows with a stream's length is a per-stream matter), sends it as one job through
`avfuse run -c configs/kafka.yaml` (its own broker from scripts/kafka.sh, or --bootstrap),
which reads the file as fast as it can, and every ``--sample-s`` of wall time records:
  - the memory of the service and every process under it (the local Ray's GCS, raylet and
    its workers: the stream actor, the shared operators), summed over the tree from
    /proc/<pid>/smaps_rollup: RSS (the target's figure), PSS (shared pages split among the
    processes that map them: other programs of the same venv on the machine move it as they
    start and stop) and anonymous memory (heaps: what a leak grows, whoever else runs);
  - how far the stream is, in media seconds: ``processed_s`` of its latest summary on the
    summaries topic (one every records.summary_every_s of media);
  - the time of one GET /metrics.
At the start (first summary) and the end (stream_end) the scrape time is the median of 5.

Prints: hours of media processed, wall time and speed (x real time); RSS, PSS and anonymous
memory at the first sample after the warm-up and at the last, and their slope in MiB per hour
of media (least squares over the samples after the warm-up: the larger of 10 % of the media
and 5 min, at most half of it); the processes whose RSS grew most; the scrape time at the start
and at the end and their ratio; what the final summary saw. Targets: RSS slope <= 5 MiB per
hour of media, scrape time flat (end <= 1.5 x start + 5 ms). --json prints the figures (and
every sample) as one JSON object instead, the progress going to stderr. Exits 0 once the
stream ran, whatever the figures; 1 when it could not.

The media (320x240, 25 fps H.264, AAC 48 kHz mono): two 64 s pieces are encoded once, one of
moving content (a square crossing a background whose colour changes every 8 s: scene cuts,
motion) and one still picture, both over continuous music (a melody of harmonic notes over a
bass, never silent). The long file is a stream copy of those pieces with shifted timestamps
(64 s is a whole number of video frames and AAC frames, so the clock runs on without a gap):
the first 30 % moving, then 40 % one still picture (a frozen_video that stays open for that
long: 48 min of 2 h), then 30 % moving again. Writing 2 h takes seconds, not the hour an
encode would.

Usage: python -m benchmarks.bench_soak [--hours 2.0] [--sample-s 10] [--profile pretrained|signal]
                                      [--bootstrap HOST:PORT] [--kafka-port N] [--json] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.app.sample import concatenate_pieces
from tests.kafka_support import Broker, Reader, Service, free_port, job, produce

STREAM_ID = "soak"
PIECE_S = 64.0  # a whole number of 40 ms video frames and of 1024-sample AAC frames at 48 kHz
WIDTH, HEIGHT, FPS, AUDIO_RATE_HZ = 320, 240, 25, 48000
AUDIO_FRAME = 1024
LAYOUT = (("moving", 0.3), ("still", 0.4), ("moving", 0.3))  # parts of the stream, in order
NOTES_HZ = np.array([220.0, 246.94, 277.18, 329.63, 369.99, 440.0, 493.88, 554.37])  # A major pentatonic-ish
SLOPE_TARGET_MIB_PER_H = 5.0
SCRAPE_FLAT_RATIO, SCRAPE_FLAT_SLACK_S = 1.5, 0.005
MIB = 1024 * 1024


# -- media -----------------------------------------------------------------------------


def music(t_s: np.ndarray) -> np.ndarray:
    """Mono float32: a melody (a note every 0.25 s, four harmonics, a soft attack) over a bass; never silent."""
    note = (np.floor(t_s / 0.25).astype(np.int64) * 5 + np.floor(t_s / 1.0).astype(np.int64) * 3) % len(NOTES_HZ)
    f_hz = NOTES_HZ[note]
    envelope = 0.6 + 0.4 * np.exp(-8.0 * (t_s % 0.25))
    melody = sum((0.5 / k) * np.sin(2 * np.pi * k * f_hz * t_s) for k in (1, 2, 3, 4)) * envelope
    bass = 0.4 * np.sin(2 * np.pi * 110.0 * t_s) + 0.2 * np.sin(2 * np.pi * 165.0 * t_s)
    return (0.12 * (melody + bass)).astype(np.float32)


def moving_frame(t_s: float) -> np.ndarray:
    """RGB uint8: a white square crossing a background that changes colour every 8 s (a scene cut)."""
    colours = ((30, 60, 200), (230, 120, 30), (40, 160, 60), (200, 40, 120))
    frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    frame[:] = colours[int(t_s // 8) % len(colours)]
    side = HEIGHT // 4
    x = int((WIDTH - side) * ((t_s % 8) / 8))
    y = int((HEIGHT - side) * (0.5 + 0.4 * math.sin(t_s)))
    frame[y:y + side, x:x + side] = 255
    return frame


_STILL = np.empty((HEIGHT, WIDTH, 3), np.uint8)
_STILL[:] = (90, 90, 140)
_STILL[HEIGHT // 3:2 * HEIGHT // 3, WIDTH // 3:2 * WIDTH // 3] = (230, 230, 90)


def still_frame(t_s: float) -> np.ndarray:
    return _STILL


def write_piece(path: Path, frame_at) -> Path:
    """PIECE_S of ``frame_at`` pictures over the music: H.264 (a key frame every 2 s) and AAC."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, 1000)
        video.options = {"preset": "ultrafast", "g": str(2 * FPS), "crf": "28"}
        audio = container.add_stream("aac", rate=AUDIO_RATE_HZ, layout="mono")
        items = [(i / FPS, 0, i) for i in range(int(PIECE_S * FPS))]
        items += [(s / AUDIO_RATE_HZ, 1, s) for s in range(0, int(PIECE_S * AUDIO_RATE_HZ), AUDIO_FRAME)]
        for _, kind, n in sorted(items):  # presentation order: an interleaved file
            if kind == 0:
                frame = av.VideoFrame.from_ndarray(frame_at(n / FPS), format="rgb24")
                frame.pts, frame.time_base = int(round(n * 1000 / FPS)), Fraction(1, 1000)
                container.mux(video.encode(frame))
            else:
                samples = music(np.arange(n, n + AUDIO_FRAME) / AUDIO_RATE_HZ)
                frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE_HZ, n, Fraction(1, AUDIO_RATE_HZ)
                container.mux(audio.encode(frame))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return path


def piece_order(hours: float) -> list[str]:
    pieces = max(len(LAYOUT), math.ceil(hours * 3600 / PIECE_S))
    order: list[str] = []
    for i, (kind, share) in enumerate(LAYOUT):
        count = pieces - len(order) if i == len(LAYOUT) - 1 else max(1, round(pieces * share))
        order += [kind] * count
    return order


def write_soak_media(folder: Path, hours: float) -> tuple[Path, float, list[str]]:
    """The long file: the pieces copied back to back on one clock (no re-encode); (path, seconds, order)."""
    pieces = {"moving": write_piece(folder / "moving.mp4", moving_frame),
              "still": write_piece(folder / "still.mp4", still_frame)}
    order = piece_order(hours)
    out_path = concatenate_pieces(folder / f"soak_{hours:g}h.mp4", [pieces[kind] for kind in order], PIECE_S)
    return out_path, len(order) * PIECE_S, order


# -- memory of the service's process tree -------------------------------------------------


def _children_of() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (Ray's GCS and raylet are its children, the workers the raylet's)."""
    children, tree, todo = _children_of(), [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


SMAPS_MEMORY = {"rss": "Rss:", "pss": "Pss:", "anon": "Anonymous:"}  # kind -> its smaps_rollup line
# RSS split by what backs it (/proc/<pid>/status): pages of mapped files (libraries, the venv's .so files)
# and of shared memory (Ray's object store is a shared mapping each worker touches page by page).
STATUS_MEMORY = {"rss_file": "RssFile:", "rss_shmem": "RssShmem:"}
MEMORY = {**SMAPS_MEMORY, **STATUS_MEMORY}


def _read_kinds(path: str, kinds: dict[str, str], found: dict[str, int]) -> None:
    with open(path) as f:
        for line in f:
            for kind, prefix in kinds.items():
                if line.startswith(prefix):
                    found[kind] = int(line.split()[1]) * 1024


def process_memory(pid: int) -> dict[str, int] | None:
    """Bytes of each MEMORY kind of one process, from smaps_rollup and status (cheap: the kernel sums them);
    None once gone."""
    found: dict[str, int] = {}
    try:
        _read_kinds(f"/proc/{pid}/smaps_rollup", SMAPS_MEMORY, found)
        _read_kinds(f"/proc/{pid}/status", STATUS_MEMORY, found)
    except OSError:
        return None
    return found if len(found) == len(MEMORY) else None


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return "?"
    words = [w.decode(errors="replace") for w in words if w]
    if not words:
        return "?"
    if words[0].startswith("ray::"):  # a Ray worker names its actor and task
        return words[0]
    name = os.path.basename(words[0])
    if name.startswith("python") and len(words) > 1:  # the script or module it runs
        rest = words[1:]
        module = rest[rest.index("-m") + 1] if "-m" in rest[:-1] else None
        script = next((w for w in rest if w.endswith(".py")), None)
        name = module or (os.path.basename(script) if script else name)
    return name


@dataclass
class Sample:
    wall_s: float  # since the job was sent
    media_s: float  # processed_s of the stream's latest summary
    memory_bytes: dict[str, int]  # per MEMORY kind, summed over the service's process tree
    processes: int
    scrape_s: float | None


# -- the run ------------------------------------------------------------------------------


def scrape_s(port: int) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        reply.read()
    return time.perf_counter() - started


def median_scrape_s(port: int, times: int = 5) -> float:
    return statistics.median(scrape_s(port) for _ in range(times))


def least_squares_slope(x: np.ndarray, y: np.ndarray) -> float | None:
    return float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 and np.ptp(x) > 0 else None


def warm_up_media_s(total_media_s: float) -> float:
    return min(max(0.1 * total_media_s, 300.0), 0.5 * total_media_s)


def run_soak(bootstrap_broker: Broker, media: Path, media_s: float, work: Path, profile: str, sets: list[str],
             sample_s: float, log) -> dict:
    prefix = f"bench-soak-{uuid.uuid4().hex[:8]}"
    service = Service(bootstrap_broker, prefix, work, f"profile={profile}", *sets)
    reader = Reader(bootstrap_broker, [service.topics["summaries"], service.topics["errors"]])
    samples: list[Sample] = []
    per_process: dict[int, list[dict[str, int]]] = {}  # pid -> [its memory at the first sample after warm-up, at the last]
    names: dict[int, str] = {}
    warm_up_s = warm_up_media_s(media_s)
    try:
        started = time.monotonic()
        service.wait_ready()
        log(f"service ready in {time.monotonic() - started:.0f} s (metrics port {service.metrics_port}, "
            f"log {service.log_path})")
        produce(bootstrap_broker, service.topics["jobs"], [job(STREAM_ID, str(media))])
        sent = time.monotonic()
        position_s, end, errors, scrape_start_s, last_summary = 0.0, None, [], None, {}
        next_sample = sent
        while end is None:
            if service.proc.poll() is not None:
                raise RuntimeError(f"avfuse run exited with {service.proc.returncode}:\n{service.log()}")
            for batch in reader.consumer.poll(timeout_ms=500).values():
                for message in batch:
                    record = json.loads(message.value)
                    if record.get("stream_id") != STREAM_ID:
                        continue
                    if record["type"] == "summary":
                        position_s = max(position_s, float(record["processed_s"]))
                        last_summary = record
                    elif record["type"] == "error":
                        errors.append(record.get("reason", ""))
                    elif record["type"] == "stream_end":
                        end = record
            if scrape_start_s is None and position_s > 0:
                scrape_start_s = median_scrape_s(service.metrics_port)
                log(f"first summary at {position_s:.0f} media s, {time.monotonic() - sent:.0f} s after the job; "
                    f"scrape {scrape_start_s * 1000:.1f} ms")
            now = time.monotonic()
            if end is None and now >= next_sample:
                next_sample += sample_s * max(1, math.ceil((now - next_sample) / sample_s))
                tree = process_tree(service.proc.pid)
                memory = {pid: m for pid in tree if (m := process_memory(pid)) is not None}
                try:
                    one_scrape_s = scrape_s(service.metrics_port)
                except OSError:
                    one_scrape_s = None
                totals = {kind: sum(m[kind] for m in memory.values()) for kind in MEMORY}
                sample = Sample(round(now - sent, 2), position_s, totals, len(memory), one_scrape_s)
                samples.append(sample)
                if position_s >= warm_up_s:
                    for pid, m in memory.items():
                        if pid not in per_process:
                            names[pid] = process_name(pid)
                        per_process.setdefault(pid, [m, m])[1] = m
                log(f"  {sample.wall_s:7.0f} s wall  {position_s / 3600:6.3f} h media  "
                    + "  ".join(f"{kind.upper()} {totals[kind] / MIB:7.1f} MiB" for kind in MEMORY)
                    + f"  {sample.processes} processes"
                    + (f"  scrape {one_scrape_s * 1000:.1f} ms" if one_scrape_s is not None else ""))
        wall_s = time.monotonic() - sent
        if service.proc.poll() is not None:
            raise RuntimeError(f"avfuse run exited with {service.proc.returncode} at the stream's end:\n"
                               f"{service.log()}")
        scrape_end_s = median_scrape_s(service.metrics_port)
        code = service.terminate()
    except OSError as exc:  # the metrics endpoint went away
        raise RuntimeError(f"{exc}; avfuse run's log ends:\n{service.log()}") from None
    finally:
        reader.close()
        if service.proc.poll() is None:
            service.kill()
    return figures(samples, end, last_summary, errors, wall_s, media_s, warm_up_s, scrape_start_s, scrape_end_s,
                   code, per_process, names, profile)


def figures(samples: list[Sample], end: dict, summary: dict, errors: list[str], wall_s: float, media_s: float,
            warm_up_s: float, scrape_start_s: float | None, scrape_end_s: float, exit_code: int, per_process: dict,
            names: dict, profile: str) -> dict:
    processed_s = float(end["processed_s"])
    steady = [s for s in samples if s.media_s >= warm_up_s]
    x = np.array([s.media_s / 3600 for s in steady])
    slopes = {kind: least_squares_slope(x, np.array([s.memory_bytes[kind] / MIB for s in steady])) for kind in MEMORY}
    first, last = (steady[0], steady[-1]) if steady else (None, None)
    growth = sorted(((last_m["rss"] - first_m["rss"], pid, {kind: last_m[kind] - first_m[kind] for kind in STATUS_MEMORY})
                     for pid, (first_m, last_m) in per_process.items()), reverse=True)
    scrape_ratio = scrape_end_s / scrape_start_s if scrape_start_s else None
    return {
        "profile": profile,
        "status": end["status"],
        "media_hours": round(media_s / 3600, 4),
        "processed_hours": round(processed_s / 3600, 4),
        "wall_s": round(wall_s, 1),
        "speed_x": round(processed_s / wall_s, 2) if wall_s > 0 else None,
        "samples": len(samples),
        "steady_samples": len(steady),
        "warm_up_media_s": round(warm_up_s, 1),
        "rss_at_job_mib": round(samples[0].memory_bytes["rss"] / MIB, 1) if samples else None,
        **{f"{kind}_{when}_mib": round(sample.memory_bytes[kind] / MIB, 1) if sample else None
           for kind in MEMORY for when, sample in (("start", first), ("end", last))},
        **{f"{kind}_slope_mib_per_media_hour": round(slope, 2) if slope is not None else None
           for kind, slope in slopes.items()},
        "processes_start": first.processes if first else None,
        "processes_end": last.processes if last else None,
        "rss_slope_target_mib_per_media_hour": SLOPE_TARGET_MIB_PER_H,
        "rss_slope_met": None if slopes["rss"] is None else slopes["rss"] <= SLOPE_TARGET_MIB_PER_H,
        "scrape_start_ms": round(scrape_start_s * 1000, 2) if scrape_start_s else None,
        "scrape_end_ms": round(scrape_end_s * 1000, 2),
        "scrape_ratio": round(scrape_ratio, 2) if scrape_ratio is not None else None,
        "scrape_flat": scrape_start_s is not None
                       and scrape_end_s <= SCRAPE_FLAT_RATIO * scrape_start_s + SCRAPE_FLAT_SLACK_S,
        "top_rss_growth": [{"pid": pid, "process": names.get(pid, "?"), "mib": round(delta / MIB, 1),
                            **{f"{kind}_mib": round(by_kind[kind] / MIB, 1) for kind in STATUS_MEMORY}}
                           for delta, pid, by_kind in growth[:3]],
        "errors": errors[:5],
        # What the stream's final summary says it saw: the media did what it should (a long frozen_video, no silence).
        "final_summary": {key: summary.get(key) for key in ("final", "counts_by_label", "frozen_s", "silence_s",
                                                             "audio_tags", "visual_tags")},
        "service_exit_code": exit_code,
        "series": [asdict(s) for s in samples],
    }


def report(f: dict) -> None:
    def num(value, fmt="d"):
        return "n/a" if value is None else format(value, fmt)

    verdict = {True: "met", False: "MISSED", None: "not measured: fewer than 2 samples after the warm-up; "
                                                   "a smaller --sample-s or more --hours"}[f["rss_slope_met"]]

    print(f"soak ({f['profile']} profile): {f['processed_hours']:.3f} h of media of {f['media_hours']:.3f} h "
          f"({f['status']}) in {f['wall_s']:.0f} s wall: {num(f['speed_x'], '.2f')}x real time; "
          f"{f['samples']} samples, {f['steady_samples']} after the warm-up ({f['warm_up_media_s']:.0f} media s)")
    print(f"  RSS  at the job {num(f['rss_at_job_mib'], '.1f')} MiB, after the warm-up "
          f"{num(f['rss_start_mib'], '.1f')} MiB  end {num(f['rss_end_mib'], '.1f')} MiB  "
          f"slope {num(f['rss_slope_mib_per_media_hour'], '+.2f')} MiB per hour of media "
          f"(target <= {SLOPE_TARGET_MIB_PER_H:g}: {verdict})")
    for kind in ("pss", "anon", *STATUS_MEMORY):
        print(f"  {kind.upper():<9} after the warm-up {num(f[f'{kind}_start_mib'], '.1f')} MiB  end "
              f"{num(f[f'{kind}_end_mib'], '.1f')} MiB  slope {num(f[f'{kind}_slope_mib_per_media_hour'], '+.2f')} "
              "MiB per hour of media")
    print(f"  processes in the service's tree: {num(f['processes_start'])} -> {num(f['processes_end'])}")
    print(f"  scrape GET /metrics (median of 5): start {num(f['scrape_start_ms'], '.1f')} ms  end "
          f"{f['scrape_end_ms']:.1f} ms  ratio {num(f['scrape_ratio'], '.2f')} "
          f"(flat: end <= {SCRAPE_FLAT_RATIO:g} x start + {SCRAPE_FLAT_SLACK_S * 1000:g} ms: "
          f"{'yes' if f['scrape_flat'] else 'NO'})")
    if f["top_rss_growth"]:
        print("  most RSS growth after the warm-up: " + "; ".join(
            f"{g['process']} (pid {g['pid']}) {g['mib']:+.1f} MiB (file {g['rss_file_mib']:+.1f}, "
            f"shmem {g['rss_shmem_mib']:+.1f})" for g in f["top_rss_growth"]))
    seen = f["final_summary"]
    tags = "; ".join(f"{what}: " + ", ".join(f"{t['label']} {t['seconds']:.0f}s" for t in (seen.get(key) or [])[:3])
                     for what, key in (("heard", "audio_tags"), ("seen", "visual_tags")) if seen.get(key))
    print(f"  final summary: {seen.get('counts_by_label')}; frozen {seen.get('frozen_s')} s, silence "
          f"{seen.get('silence_s')} s" + (f"; {tags}" if tags else ""))
    if f["errors"]:
        print(f"  error records: {f['errors']}")
    print(f"  service exit code after SIGTERM: {f['service_exit_code']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=2.0, help="hours of media in the one stream")
    parser.add_argument("--sample-s", type=float, default=10.0, help="wall seconds between memory samples")
    parser.add_argument("--profile", default="pretrained", choices=("pretrained", "signal"))
    parser.add_argument("--bootstrap", metavar="HOST:PORT", help="use this broker (default: start one)")
    parser.add_argument("--kafka-port", type=int, help="port of the broker started here (controller: +1)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON (with the samples)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override for `avfuse run`")
    args = parser.parse_args()

    def log(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    broker = None
    with tempfile.TemporaryDirectory(prefix="avfuse-soak-") as folder:
        work = Path(folder)
        started = time.monotonic()
        media, media_s, order = write_soak_media(work, args.hours)
        runs = [(kind, len(list(group))) for kind, group in itertools.groupby(order)]
        parts = ", then ".join(f"{kind} {count * PIECE_S / 60:.1f} min" for kind, count in runs)
        log(f"media: {media.name}, {media_s / 3600:.3f} h ({parts}), "
            f"{media.stat().st_size / MIB:.0f} MiB, written in {time.monotonic() - started:.1f} s")
        try:
            if args.bootstrap:
                broker = Broker(int(args.bootstrap.rsplit(":", 1)[1]), owned=False)
                broker.bootstrap = args.bootstrap
            else:
                started = time.monotonic()
                broker = Broker(args.kafka_port or free_port(), owned=True)
                broker.start()
                log(f"broker: {broker.bootstrap} (started in {time.monotonic() - started:.0f} s)")
            result = run_soak(broker, media, media_s, work, args.profile, args.sets, args.sample_s, log)
        except (RuntimeError, AssertionError) as exc:
            print(f"bench_soak: {exc}", file=sys.stderr)
            return 1
        finally:
            if broker is not None and broker.owned:
                broker.stop(clean=True)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
