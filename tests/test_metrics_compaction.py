"""Compaction of the metrics folder: real processes count into it with avfuse's own Metrics and
exit; their files, merged into one compacted set, must leave every total a scrape shows as it was,
keep the folder flat however many processes come and go, and never touch a live process's files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import multiprocess

from pipeline.observe import metrics, metrics_compaction
from tests.test_metrics import parse, total

REPO = Path(__file__).resolve().parents[1]
EXTRA_MODES = ("sum", "max", "min", "mostrecent")  # gauge modes avfuse's Metrics does not use itself


def count_as(m: metrics.Metrics, extra: dict, i: int) -> None:
    """What process number ``i`` counts; ``expected`` says what that adds up to.

    Values are exact in binary (integers, powers of two), so that a sum is the same in any order.
    """
    m.frames_decoded.labels(f"cam{i % 3}").inc(i + 1)
    m.fusion_seconds.observe(2.0 ** -(i % 8))
    m.operator_batch_size.labels("vision").observe(i % 20)
    m.streams_active.inc()  # livesum
    m.live_lag.labels(f"cam{i % 3}").set(i)  # livemax
    for gauge in extra.values():
        gauge.labels("x").set(i)


def expected(indices: list[int]) -> dict:
    """What the processes ``indices`` (ended, in this order) leave in the exposition."""
    return {
        "frames": sum(i + 1 for i in indices),
        "fusion_count": len(indices),
        "fusion_sum": sum(2.0 ** -(i % 8) for i in indices),
        "batch_sum": sum(i % 20 for i in indices),
        "sum": sum(indices), "max": max(indices), "min": min(indices), "mostrecent": indices[-1],
    }


def observed(samples: dict) -> dict:
    return {
        "frames": total(samples, "avfuse_frames_decoded_total"),
        "fusion_count": total(samples, "avfuse_fusion_seconds_count"),
        "fusion_sum": total(samples, "avfuse_fusion_seconds_sum"),
        "batch_sum": total(samples, "avfuse_operator_batch_size_sum"),
        **{mode: total(samples, f"avfuse_test_{mode}") for mode in EXTRA_MODES},
    }


# One process that forks ``count`` children one after another; each counts as its number and exits.
# The parent makes the Metrics before forking: its children count with them (prometheus_client
# moves a forked child to files of its own pid) and, unlike a new process, start no sweep.
RUNNER = """
import json, os, sys
from prometheus_client import Gauge
from pipeline.observe import metrics
from tests.test_metrics_compaction import EXTRA_MODES, count_as

first, count = int(sys.argv[1]), int(sys.argv[2])
m = metrics.get()
extra = {mode: Gauge(f"avfuse_test_{mode}", f"a {mode} gauge", ["lib"], multiprocess_mode=mode, registry=None)
         for mode in EXTRA_MODES}
pids = []
for i in range(first, first + count):
    pid = os.fork()
    if pid == 0:
        count_as(m, extra, i)
        os._exit(0)
    os.waitpid(pid, 0)
    pids.append(pid)
print(json.dumps(pids))
"""

# A process that stays: counts as each number it reads, answering "counted" each time.
LIVE = """
import sys
from prometheus_client import Gauge
from pipeline.observe import metrics
from tests.test_metrics_compaction import EXTRA_MODES, count_as

m = metrics.get()
extra = {mode: Gauge(f"avfuse_test_{mode}", f"a {mode} gauge", ["lib"], multiprocess_mode=mode, registry=None)
         for mode in EXTRA_MODES}
for line in sys.stdin:
    count_as(m, extra, int(line))
    print("counted", flush=True)
"""


def env_for(folder: Path) -> dict[str, str]:
    return {**os.environ, metrics.MULTIPROC_ENV: str(folder)}


def ended_processes(folder: Path, first: int, count: int) -> list[int]:
    """Pids of ``count`` processes that counted as first, first + 1, ... into ``folder`` and exited."""
    out = subprocess.run([sys.executable, "-c", RUNNER, str(first), str(count)], env=env_for(folder), cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return json.loads(out)


class LiveProcess:
    def __init__(self, folder: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", LIVE], env=env_for(folder), cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def count_as(self, i: int) -> None:
        self.proc.stdin.write(f"{i}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "counted"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture
def folder(tmp_path) -> Path:
    path = tmp_path / "metrics"
    path.mkdir()
    return path


@pytest.fixture
def live(folder):
    process = LiveProcess(folder)
    yield process
    process.close()


def scrape(folder: Path) -> dict:
    return parse(metrics.collect(folder).decode())


def db_files(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.db")}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def runner_pid(folder: Path, children: list[int]) -> set[int]:
    """The forking parent's pid: it left a file too."""
    return set(metrics_compaction.process_files(folder)) - set(children)


def test_compaction_leaves_every_sample_of_ended_processes_as_it_was(folder):
    dead = ended_processes(folder, 0, 20)
    dead += runner_pid(folder, dead)
    for pid in dead:  # what the scrape shows once they are marked dead, as prometheus_client does it
        multiprocess.mark_process_dead(pid, str(folder))
    before = scrape(folder)

    merged = metrics_compaction.compact_dead(folder, dead)

    assert merged and scrape(folder) == before  # every series, every bucket, every value
    assert observed(before) == expected(list(range(20)))
    assert db_files(folder) == {"counter_compacted.db", "histogram_compacted.db",
                                *(f"gauge_{mode}_compacted.db" for mode in EXTRA_MODES)}


def test_fifty_processes_coming_and_going_leave_a_constant_number_of_files(folder):
    """Each new process (here: each round's forking parent) sweeps the ones that ended before it."""
    counts = []
    for round_ in range(5):
        ended_processes(folder, 10 * round_, 10)
        counts.append(len(db_files(folder)))
    assert len(set(counts[1:])) == 1, counts  # the compacted set, plus the last round's files
    metrics_compaction.compact_ended(folder)
    assert len(db_files(folder)) == 6  # counter, histogram, four gauge modes
    assert observed(scrape(folder)) == expected(list(range(50)))
    assert total(scrape(folder), "avfuse_streams_active") == 0  # ended: their live gauges are gone


def test_a_live_process_keeps_its_files_untouched_and_keeps_counting_after_a_compaction(folder, live):
    live.count_as(100)
    own = {p.name: digest(p) for p in folder.glob(f"*_{live.pid}.db")}
    assert len(own) == 8  # counter, histogram, livesum, livemax and the four other gauge modes
    dead = ended_processes(folder, 0, 10)

    compacted = metrics_compaction.compact_ended(folder)

    assert live.pid not in compacted and set(dead) <= compacted
    assert {p.name: digest(p) for p in folder.glob(f"*_{live.pid}.db")} == own
    live.count_as(7)
    samples = scrape(folder)
    assert total(samples, "avfuse_frames_decoded_total") == expected(list(range(10)))["frames"] + 101 + 8
    assert total(samples, "avfuse_streams_active") == 2  # the live process counted itself twice
    assert total(samples, "avfuse_fusion_seconds_count") == 10 + 2


def test_gauges_of_ended_processes_merge_by_their_mode_and_live_gauges_are_dropped(folder, live):
    live.count_as(5)
    dead = ended_processes(folder, 0, 10)  # 0..9: the maximum is theirs, the minimum too, the last set too
    before = scrape(folder)
    assert total(before, "avfuse_streams_active") == 11  # nobody marked them dead yet

    metrics_compaction.compact_ended(folder)

    after = scrape(folder)
    # livesum, livemax: only the live process's, as after prometheus_client's mark_process_dead
    assert total(after, "avfuse_streams_active") == 1
    assert total(after, "avfuse_live_lag_seconds", stream="cam2") == 5
    assert ("avfuse_live_lag_seconds", (("stream", "cam0"),)) not in after  # only ended processes had it
    # the other modes: as before, over every process, the live one included
    for mode in EXTRA_MODES:
        assert total(after, f"avfuse_test_{mode}") == total(before, f"avfuse_test_{mode}"), mode
    assert total(after, "avfuse_test_sum") == sum(range(10)) + 5
    assert total(after, "avfuse_test_max") == 9 and total(after, "avfuse_test_min") == 0
    assert total(after, "avfuse_test_mostrecent") == 9  # the last ended process set it after the live one
    live.count_as(4)
    assert total(scrape(folder), "avfuse_test_mostrecent") == 4  # later than the compacted sample
    assert set(dead).isdisjoint(metrics_compaction.process_files(folder))


def test_a_scrape_during_compactions_sees_every_sample_exactly_once(folder):
    dead = ended_processes(folder, 0, 40)
    dead += runner_pid(folder, dead)
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(folder))
    before = scrape(folder)
    seen: list[dict] = []
    failed: list[BaseException] = []
    done = threading.Event()

    def scrape_in_a_loop() -> None:
        while not done.is_set():
            try:
                seen.append(scrape(folder))
            except Exception as exc:  # a file gone between listing and reading
                failed.append(exc)
                return

    scraper = threading.Thread(target=scrape_in_a_loop)
    scraper.start()
    try:
        for pid in dead:  # one compaction per process: many file sets replaced while scraping
            metrics_compaction.compact_dead(folder, [pid])
    finally:
        done.set()
        scraper.join()
    assert not failed and len(seen) >= 5, (failed, len(seen))
    assert all(samples == before for samples in seen), [observed(s) for s in seen if s != before][:3]
    assert scrape(folder) == before


def test_mark_process_dead_compacts_an_ended_process_and_leaves_one_that_exists(folder, live):
    live.count_as(1)
    [pid] = ended_processes(folder, 2, 1)

    metrics.mark_process_dead(pid, folder)
    metrics.mark_process_dead(live.pid, folder)  # not gone yet (ray.kill returns before it is)

    files = db_files(folder)
    assert not any(name.endswith(f"_{pid}.db") for name in files)
    assert {f"counter_{live.pid}.db", f"histogram_{live.pid}.db"} <= files
    assert f"gauge_livesum_{live.pid}.db" not in files  # its live gauges are dropped, as told
    assert total(scrape(folder), "avfuse_frames_decoded_total") == 3 + 2


def test_a_compaction_killed_halfway_is_finished_by_the_next_scrape(folder, monkeypatch):
    dead = ended_processes(folder, 0, 5)
    dead += runner_pid(folder, dead)
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(folder))
    before = scrape(folder)
    journal = folder / metrics_compaction.JOURNAL_NAME

    class Killed(BaseException):
        pass

    remove = os.remove

    def killed_at_its_first_deletion(path):
        if journal.exists():
            raise Killed
        remove(path)

    monkeypatch.setattr(os, "remove", killed_at_its_first_deletion)
    with pytest.raises(Killed):
        metrics_compaction.compact_dead(folder, dead)
    monkeypatch.undo()
    # the compacted files are in place and the ended processes' files too: read as is, twice counted
    assert journal.exists() and "counter_compacted.db" in db_files(folder)
    assert f"counter_{dead[0]}.db" in db_files(folder)

    assert scrape(folder) == before  # the journal finished first, then read
    assert not journal.exists() and not list(folder.glob("*.writing"))
    assert not set(dead) & set(metrics_compaction.process_files(folder))
