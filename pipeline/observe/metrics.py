"""Prometheus metrics of every stage; what they mean is listed in the README.

Design: prometheus-client's multiprocess mode. Every avfuse process of a run
(the driver and each Ray actor on every node) writes its samples to
memory-mapped files in one folder, ``PROMETHEUS_MULTIPROC_DIR``; one exporter
per node merges that folder into a single scrape target (``pipeline/observe/exporter.py``).
Counters of processes that have exited keep counting: a stream actor's frames
stay in the totals after its stream ended and the actor is gone. Their files are
merged into one compacted set (``pipeline/observe/metrics_compaction.py``) when a
process is marked dead and whenever a process starts counting, so the folder, and
the time of a scrape, stay flat however many processes came and went.

The folder must be known before prometheus_client creates a value, so
``enable_multiprocess`` runs first in the driver, and Ray passes the same
variable to every worker of the job (``runtime_env`` in ``init_ray``). A process
without it (a unit test, a benchmark on the GPU box) counts in its own memory.

Per-stream labels can be switched off (``metrics.per_stream_labels: false``):
the ``stream`` label is then empty, which Prometheus treats as absent, so the
number of series no longer grows with the number of streams.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
from functools import lru_cache
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values

from pipeline.observe import metrics_compaction

log = logging.getLogger("avfuse.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PER_STREAM_ENV = "AVFUSE_METRICS_PER_STREAM"

# Latency buckets from 1 ms to ~2 min: operator batches are milliseconds, end-to-end
# latency of a live stream is seconds, a backlogged sink can take minutes.
_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def enable_multiprocess(folder: str | Path, fresh: bool = True) -> Path:
    """Make this process (and the Ray workers given the same variable) write to ``folder``.

    ``fresh`` empties the folder first: totals start at zero for a new run.
    """
    folder = Path(folder)
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    # prometheus_client picks its value class when it is imported; metrics made from
    # now on must use the shared files even if it was imported earlier.
    values.ValueClass = values.get_value_class()
    get.cache_clear()  # metrics made before now counted in memory only
    return folder


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV)


def stream_label(stream_id: str) -> str:
    return stream_id if os.environ.get(PER_STREAM_ENV, "1") != "0" else ""


def mark_process_dead(pid: int, folder: str | Path | None = None) -> None:
    """Drop a dead process's live gauges; its counters and histograms keep counting, compacted.

    A pid that still exists here is not compacted: ``ray.kill`` returns before the process
    is gone (it may still write), or the pid is another node's. The next sweep
    (``compact_ended_processes``) takes it once it has ended.
    """
    folder = folder or multiprocess_dir()
    if folder:
        multiprocess.mark_process_dead(pid, str(folder))
        if not metrics_compaction.process_exists(pid):
            _quietly(metrics_compaction.compact_dead, folder, [pid])


def compact_ended_processes(folder: str | Path | None = None) -> None:
    """Merge the files of every process of this node's folder that has ended into the compacted set."""
    folder = folder or multiprocess_dir()
    if folder:
        _quietly(metrics_compaction.compact_ended, folder)


def _quietly(compact, folder: str | Path, *args) -> None:
    # Housekeeping: a folder it cannot tidy must not fail a stream or a shutdown; the
    # files stay, and the scrape still merges them.
    try:
        compact(folder, *args)
    except Exception as exc:
        log.warning("could not compact the metrics files of ended processes in %s: %s", folder, exc)
        log.debug("compaction failed", exc_info=True)


class Metrics:
    """Every avfuse metric. Made once per process (``get()``), after the folder is chosen."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        kw = {"registry": registry}
        # decode (StreamActor)
        self.frames_decoded = Counter("avfuse_frames_decoded_total", "Video frames decoded", ["stream"], **kw)
        self.frames_kept = Counter("avfuse_frames_kept_total",
                                   "Decoded frames kept (sampled at video.fps, converted to RGB)", ["stream"], **kw)
        self.audio_decoded = Counter("avfuse_audio_decoded_seconds_total", "Seconds of audio decoded",
                                     ["stream"], **kw)
        self.decode_errors = Counter("avfuse_decode_errors_total",
                                     "Packets or frames that could not be decoded", ["stream"], **kw)
        self.speech_scored = Counter("avfuse_speech_scored_seconds_total",
                                     "Seconds of audio scored by speech activity (silero-vad, 32 ms windows)",
                                     ["stream"], **kw)
        # shared operators (StageActor)
        self.operator_items = Counter("avfuse_operator_items_total",
                                      "Items encoded per operator: frames (vision), 100 ms audio rows (audio), "
                                      "windows (fusion)", ["operator"], **kw)
        self.operator_batch_size = Histogram("avfuse_operator_batch_size", "Items per operator batch",
                                             ["operator"], buckets=_BATCH_SIZE_BUCKETS, **kw)
        self.operator_batch_seconds = Histogram("avfuse_operator_batch_seconds",
                                                "Operator compute time per batch", ["operator"],
                                                buckets=_LATENCY_BUCKETS_S, **kw)
        self.gpu_memory = Gauge("avfuse_gpu_memory_bytes", "CUDA memory allocated by an operator",
                                ["operator", "device"], multiprocess_mode="livesum", **kw)
        # alignment and fusion (StreamActor)
        self.windows = Counter("avfuse_windows_total",
                               "Windows emitted for fusion; state=partial when a modality was missing",
                               ["stream", "state"], **kw)
        self.late_rows = Counter("avfuse_late_rows_total",
                                 "Encoded rows that arrived after their window was decided (dropped)",
                                 ["stream", "modality"], **kw)
        self.fusion_seconds = Histogram("avfuse_fusion_seconds",
                                        "Fusion request latency seen by a stream, queueing included",
                                        buckets=_LATENCY_BUCKETS_S, **kw)
        self.inflight = Gauge("avfuse_stage_inflight", "Requests in flight per stage (decode chunks, "
                              "encoder and fusion requests)", ["stage"], multiprocess_mode="livesum", **kw)
        self.streams_active = Gauge("avfuse_streams_active", "Streams being processed",
                                    multiprocess_mode="livesum", **kw)
        self.live_lag = Gauge("avfuse_live_lag_seconds",
                              "How far a live stream's processing is behind real time", ["stream"],
                              multiprocess_mode="livemax", **kw)
        # live sources (StreamActor: pipeline/ingest/live_source.py)
        self.source_reconnects = Counter("avfuse_source_reconnects_total",
                                         "Times a live source came back after going down", ["stream"], **kw)
        self.source_outage_seconds = Counter("avfuse_source_outage_seconds_total",
                                             "Wall seconds live sources were down, counted when they came back",
                                             ["stream"], **kw)
        self.source_up = Gauge("avfuse_source_up", "1 while a live source is connected and sending, else 0",
                               ["stream"], multiprocess_mode="livemax", **kw)
        self.source_last_packet_age = Gauge("avfuse_source_last_packet_age_seconds",
                                            "Seconds since a live source's last packet", ["stream"],
                                            multiprocess_mode="livemax", **kw)
        # driver
        self.driver_received_bytes = Counter("avfuse_driver_received_bytes_total",
                                             "Bytes the driver received from stream actors (pickled record "
                                             "batches: records only, never media)", ["stream"], **kw)
        # sinks
        self.records_published = Counter("avfuse_records_published_total",
                                         "Records acknowledged by a sink, by record type and event label",
                                         ["sink", "type", "label"], **kw)
        self.sink_publish_seconds = Histogram("avfuse_sink_publish_seconds",
                                              "From handing a record to a sink to its acknowledgement",
                                              ["sink"], buckets=_LATENCY_BUCKETS_S, **kw)
        self.sink_failures = Counter("avfuse_sink_failures_total", "Failed publish attempts (retried)",
                                     ["sink", "reason"], **kw)
        self.end_to_end_seconds = Histogram("avfuse_end_to_end_latency_seconds",
                                            "From the media of a record reaching avfuse to the record's "
                                            "acknowledgement by the sink", ["sink"],
                                            buckets=_LATENCY_BUCKETS_S, **kw)
        # kafka sources
        self.kafka_consumer_lag = Gauge("avfuse_kafka_consumer_lag_messages",
                                        "Messages behind the end of a partition", ["topic", "partition"],
                                        multiprocess_mode="livemax", **kw)
        self.kafka_messages = Counter("avfuse_kafka_messages_consumed_total", "Messages consumed",
                                      ["topic"], **kw)
        self.kafka_bad_messages = Counter("avfuse_kafka_bad_messages_total",
                                          "Messages turned into error records (malformed, refused, undecodable)",
                                          ["topic", "reason"], **kw)
        self.segment_gaps = Counter("avfuse_segment_gaps_total", "Gaps in a media stream's segment sequence",
                                    ["stream"], **kw)
        self.stream_retries = Counter("avfuse_stream_retries_total",
                                      "Streams run again after a transient failure (their stream actor died)",
                                      ["stream"], **kw)
        self.dead_letters = Counter("avfuse_dead_letters_total",
                                    "Jobs given up on after kafka.max_stream_retries, sent to topics.dead", **kw)
        self.deferred_messages = Counter("avfuse_kafka_deferred_messages_total",
                                         "Media messages left in Kafka for a stream with a full buffer, read again "
                                         "later", ["topic"], **kw)


@lru_cache(maxsize=1)
def get() -> Metrics:
    folder = multiprocess_dir()
    if folder is not None:  # a Ray worker on another node: the folder is new there
        Path(folder).mkdir(parents=True, exist_ok=True)
        # A process that starts tidies up after those of its node that ended (killed stream
        # actors, which nobody could mark dead once they were gone), so the folder stays flat.
        compact_ended_processes(folder)
    # A private registry: a process may make its Metrics again (enable_multiprocess).
    return Metrics(CollectorRegistry())


def worker_env(per_stream_labels: bool) -> dict[str, str]:
    """What Ray workers of this run need in their environment to count into the same folder."""
    env = {PER_STREAM_ENV: "1" if per_stream_labels else "0"}
    if multiprocess_dir() is not None:
        env[MULTIPROC_ENV] = multiprocess_dir()
    return env


def collect(folder: str | Path | None = None) -> bytes:
    """The exposition text of ``folder`` (default: this node's shared folder; without one, this
    process's own samples)."""
    folder = str(folder) if folder else multiprocess_dir()
    if folder is None:
        return generate_latest(get().registry)
    registry = CollectorRegistry()
    registry.register(_AvfuseFiles(folder))
    return generate_latest(registry)


class _AvfuseFiles:
    """avfuse's families merged from the folder's files, skipping files not yet initialised.

    prometheus_client creates a process's file before sizing it; a scrape in that window (a
    stream actor starting) fails as a whole on the empty file, and a process killed in it
    leaves the empty file behind, failing every later scrape (prometheus/client_python#1199).
    An empty file holds no samples, so leaving it out loses nothing. Only avfuse's families
    are exported: another library in a worker may share the folder. Files are listed and read
    under the folder's shared lock, so a compaction is seen either whole or not at all.
    """

    _HEADER_BYTES = 8  # used size + padding, written when the file is sized

    def __init__(self, folder: str):
        self._folder = folder

    def collect(self):
        with metrics_compaction.reading(self._folder):
            files = []
            for path in glob.glob(os.path.join(self._folder, "*.db")):
                try:
                    if os.path.getsize(path) >= self._HEADER_BYTES:
                        files.append(path)
                except OSError:  # removed meanwhile (mark_process_dead)
                    pass
            families = multiprocess.MultiProcessCollector.merge(files, accumulate=True)
        return (family for family in families if family.name.startswith("avfuse_"))


def write_textfile(path: str | Path) -> Path:
    """Write the exposition atomically, as node_exporter's textfile collector expects."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(collect())
    os.replace(tmp, path)
    return path
