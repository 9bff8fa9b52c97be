"""Compaction of the metrics folder: the files of ended processes folded into one file set.

prometheus-client's multiprocess mode gives every process its own files
(``counter_<pid>.db``, ``histogram_<pid>.db``, ``gauge_<mode>_<pid>.db``) and keeps
them after the process ended, so that its counts stay in the totals. On a service
that runs for months, stream actors come and go: the folder, and the time of every
scrape, would grow with each one. Compaction merges the files of processes that have
ended into one set, ``<kind>_compacted.db``, each written with prometheus_client's own
``MmapedDict``, so that its merge reads them like any other process's (the "pid" of a
compacted gauge is ``compacted``, a label its merge drops for the modes kept here).

Merged as the scrape's merge would: counters, histograms (per-bucket counts and sum)
and summaries add up; gauges of mode ``sum`` add up, ``max``/``min`` keep the extreme,
``mostrecent`` the latest sample. Live gauges (``live*``) of an ended process are
dropped, as prometheus' ``mark_process_dead`` does. Gauges of mode ``all`` are left as
they are: they are exported per pid, and merging them would lose that label.

Scrapes (``reading``) and compactions exclude each other through ``compaction.lock``
in the folder, shared for scrapes, exclusive for a compaction, so a scrape sees the
files either all before or all after a compaction, never a sample twice or not at all.
A compaction first writes the new files under names a scrape does not read, then
notes in ``compaction.journal`` what it will replace and delete, and does it; a
compaction or scrape that finds a journal left by one that was killed finishes it.

A process is taken as ended when ``os.kill(pid, 0)`` finds no such process: every
process that writes into the folder must be in this process's PID namespace (the
Ray workers of one node or container; beside them, a pod sharing its process
namespace), as for reaping live gauges (``pipeline/observe/node_exporter.py``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict

log = logging.getLogger("avfuse.metrics")

LOCK_NAME = "compaction.lock"
JOURNAL_NAME = "compaction.journal"
COMPACTED = "compacted"  # the "pid" part of the compacted files' names
_WRITING = ".writing"  # suffix of files being written: not *.db, so no scrape reads them

# A process's own files: <kind>_<pid>.db, where kind is counter, histogram, summary or gauge_<mode>.
_PROCESS_FILE = re.compile(r"^(counter|histogram|summary|gauge_[a-z]+)_(\d+)\.db$")
# prometheus_client writes 8 bytes (used size, padding) when it sizes a new file; before, it is empty.
_HEADER_BYTES = 8


def _sum(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    # fsum: the dead processes' total rounded once, not once per process
    return math.fsum(value for value, _ in pairs), max(timestamp for _, timestamp in pairs)


def _latest(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return max(pairs, key=lambda pair: pair[1])


# (value, timestamp) pairs of one sample in several files → the one pair the scrape's merge would take
_MERGE_BY_KIND = {
    "counter": _sum,
    "histogram": _sum,  # the files hold per-bucket counts; the scrape makes them cumulative
    "summary": _sum,
    "gauge_sum": _sum,
    "gauge_max": max,
    "gauge_min": min,
    "gauge_mostrecent": _latest,
}


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def process_files(folder: str | Path) -> dict[int, list[str]]:
    """The names of each process's own files in ``folder``, by pid (compacted files excluded)."""
    by_pid: dict[int, list[str]] = defaultdict(list)
    for name in os.listdir(folder):
        if match := _PROCESS_FILE.match(name):
            by_pid[int(match.group(2))].append(name)
    return dict(by_pid)


@contextmanager
def _locked(folder: str | Path, operation: int) -> Iterator[int | None]:
    """Hold the folder's lock (``fcntl.LOCK_SH`` or ``LOCK_EX``); yields its descriptor.

    A folder this process may not write (a read-only mount) yields None, unlocked: its
    scrape is still served, and nobody who cannot write compacts there.
    """
    try:
        fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise
        yield None
        return
    try:
        fcntl.flock(fd, operation)
        yield fd
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def reading(folder: str | Path) -> Iterator[None]:
    """Hold while listing and reading the folder's files for a scrape; scrapes share it."""
    with _locked(folder, fcntl.LOCK_SH) as fd:
        # A journal seen under the shared lock was left by a compaction that was killed
        # (a running one holds the lock exclusively): finish it before reading.
        while fd is not None and os.path.exists(os.path.join(folder, JOURNAL_NAME)):
            fcntl.flock(fd, fcntl.LOCK_EX)
            _finish_journal(folder)
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield


def compact_dead(folder: str | Path, pids: Iterable[int]) -> list[str]:
    """Merge the files of processes ``pids`` into the folder's compacted files, then delete them.

    Contract: the processes have ended (a live one would go on writing to a file that is
    gone, and its counts from then on would be lost). Returns the names of the files
    merged or deleted. The totals a scrape shows are the same before and after.
    """
    with _locked(folder, fcntl.LOCK_EX):
        return _compact(folder, set(pids))


def compact_ended(folder: str | Path) -> set[int]:
    """Compact the files of every process that no longer exists; returns their pids.

    Live processes' files are left untouched: whether a process exists is checked
    under the lock, just before its files are merged.
    """
    with _locked(folder, fcntl.LOCK_EX):
        ended = {pid for pid in process_files(folder) if not process_exists(pid)}
        _compact(folder, ended)
    return ended


def _compact(folder: str | Path, pids: set[int]) -> list[str]:
    """The compaction itself; the caller holds the lock exclusively."""
    _finish_journal(folder)
    for name in os.listdir(folder):  # written by a compaction killed before its journal: never applied
        if name.endswith(_WRITING):
            os.remove(os.path.join(folder, name))
    files_by_pid = process_files(folder)
    to_merge: dict[str, list[str]] = defaultdict(list)  # kind → names
    to_delete: list[str] = []
    for pid in pids:
        for name in files_by_pid.get(pid, []):
            kind = _PROCESS_FILE.match(name).group(1)
            if kind.startswith("gauge_live") or not _sized(os.path.join(folder, name)):
                to_delete.append(name)  # dropped, as mark_process_dead does; or empty: holds nothing
            elif kind in _MERGE_BY_KIND:
                to_merge[kind].append(name)
                to_delete.append(name)
            # else gauge_all: exported per pid, kept as it is
    if not to_delete:
        return []
    replaced = [_write_compacted(folder, kind, names) for kind, names in sorted(to_merge.items())]
    journal = {"replace": replaced, "delete": sorted(to_delete)}
    journal_path = os.path.join(folder, JOURNAL_NAME)
    with open(journal_path + _WRITING, "w") as out:
        json.dump(journal, out)
    os.replace(journal_path + _WRITING, journal_path)
    _finish_journal(folder)
    log.debug("compacted the metrics files of ended processes %s", sorted(pids))
    return journal["delete"]


def _sized(path: str) -> bool:
    try:
        return os.path.getsize(path) >= _HEADER_BYTES
    except FileNotFoundError:
        return False


def _write_compacted(folder: str | Path, kind: str, names: list[str]) -> str:
    """Write ``<kind>_compacted.db`` (under its writing name) merged with ``names``; returns its name."""
    compacted = f"{kind}_{COMPACTED}.db"
    sources = [compacted] if _sized(os.path.join(folder, compacted)) else []
    pairs_by_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for name in sources + names:
        for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(os.path.join(folder, name)):
            pairs_by_key[key].append((value, timestamp))
    merge = _MERGE_BY_KIND[kind]
    out = MmapedDict(os.path.join(folder, compacted + _WRITING))
    try:
        for key in sorted(pairs_by_key):
            out.write_value(key, *merge(pairs_by_key[key]))
    finally:
        out.close()
    return compacted


def _finish_journal(folder: str | Path) -> None:
    """Carry out a journal's replacements and deletions (again: each step may be done already)."""
    journal_path = os.path.join(folder, JOURNAL_NAME)
    try:
        with open(journal_path) as journal_file:
            journal = json.load(journal_file)
    except FileNotFoundError:
        return
    for name in journal["replace"]:
        path = os.path.join(folder, name)
        if os.path.exists(path + _WRITING):
            os.replace(path + _WRITING, path)
    for name in journal["delete"]:
        try:
            os.remove(os.path.join(folder, name))
        except FileNotFoundError:
            pass
    os.remove(journal_path)
