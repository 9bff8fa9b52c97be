"""``avfuse exporter``: a node's scrape target as a process of its own, beside Ray.

On Kubernetes each Ray worker pod runs it in a second container that shares the
metrics folder (an emptyDir at ``metrics.dir``) with the Ray container, whose
avfuse actors count into that folder (``pipeline/observe/metrics.py``). The pod is then
a scrape target from its first second, nodes the autoscaler adds later included;
``avfuse run``'s NodeExporter actors only cover the nodes alive when it started
(set ``metrics.node_exporters: false`` beside this, or both bind the port).

Live gauges (streams active, requests in flight, GPU memory) are one file per
process, and prometheus_client drops a process's only when told that it died.
The driver tells it for its own node; on another node nobody does, so a killed
stream actor would keep counting as a stream in flight. With
``reap_dead_processes`` the exporter drops, before each scrape, the live gauges
of every process that no longer exists. That needs the Ray container's
processes in view: the pod must share its process namespace
(``shareProcessNamespace: true``); without it every process looks dead.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from pathlib import Path

from pipeline.observe import metrics
from pipeline.observe.exporter import Exporter, Readiness
from pipeline.observe.metrics_compaction import process_exists

log = logging.getLogger("avfuse.exporter")

# prometheus_client's live-gauge files: gauge_<mode>_<pid>.db
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]*_(\d+)\.db$")


def dead_processes(folder: str | Path) -> set[int]:
    """Pids that have live-gauge files in ``folder`` but no longer exist."""
    pids = {int(m.group(1)) for name in os.listdir(folder) if (m := _LIVE_GAUGE_FILE.match(name))}
    return {pid for pid in pids if not process_exists(pid)}


def reap_dead_processes(folder: str | Path) -> set[int]:
    """Drop the live gauges of processes that are gone; their counters keep counting."""
    dead = dead_processes(folder)
    for pid in dead:
        metrics.mark_process_dead(pid, folder)
    return dead


def serve(folder: str | Path, port: int, reap: bool, stop: threading.Event | None = None) -> int:
    """Serve ``folder`` on ``port`` until SIGTERM/SIGINT (or ``stop``); returns the exit code."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Not enable_multiprocess(): that empties the folder, and the Ray container's
    # processes are counting into it.
    os.environ[metrics.MULTIPROC_ENV] = str(folder)

    def collect() -> bytes:
        if reap:
            reaped = reap_dead_processes(folder)
            if reaped:
                log.debug("dropped the live gauges of ended processes %s", sorted(reaped))
        return metrics.collect()

    readiness = Readiness()  # nothing to wait for: the folder is there
    exporter = Exporter(port, readiness, collect=collect).start()
    log.info("serving %s on :%d (/metrics, /healthz, /readyz)%s", folder, exporter.port,
             "; dropping live gauges of ended processes" if reap else "")
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    exporter.stop()
    return 0
