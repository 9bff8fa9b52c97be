"""Joining or starting Ray, and the metrics set-up that must come first.

The metrics folder is chosen before Ray starts, because Ray hands it to every
worker of the job; Ray's own daemons must not inherit it (they use
prometheus_client too). One NodeExporter per other node makes each node a
scrape target.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import warnings

import ray

from pipeline.compute.actors import NodeExporter
from pipeline.core.config import Config
from pipeline.observe import metrics


def init_metrics(cfg: Config) -> None:
    """Choose the folder this run's processes count into (before any metric exists).

    A folder inherited through the environment (a parent avfuse, a test run) is
    not reused: two drivers in one folder would add up each other's counts.
    """
    os.environ[metrics.PER_STREAM_ENV] = "1" if cfg.metrics.per_stream_labels else "0"
    if cfg.metrics.dir:
        metrics.enable_multiprocess(cfg.metrics.dir)
    else:
        folder = metrics.enable_multiprocess(tempfile.mkdtemp(prefix="avfuse-metrics-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)


# Task events a local Ray's GCS would keep, were they reported (a cluster's head: k8s/base/raycluster.yaml).
GCS_TASK_EVENTS = 5000


def init_ray(cfg: Config, debug: bool = False) -> None:
    if ray.is_initialized():
        return
    init_metrics(cfg)
    connect_ray(cfg, debug)


def connect_ray(cfg: Config, debug: bool = False) -> None:
    """Join or start Ray; ``init_metrics`` must have chosen the folder first."""
    worker_env = metrics.worker_env(cfg.metrics.per_stream_labels)
    # Ray's own daemons (dashboard, agents) use prometheus_client too; they must not
    # inherit our folder. Our workers get it from runtime_env instead.
    folder = os.environ.pop(metrics.MULTIPROC_ENV)
    address = cfg.runtime.ray_address
    try:
        with warnings.catch_warnings():  # its two-line advice; the error below says it in one
            warnings.filterwarnings("ignore", message="Ray Client connection timed out")
            ray.init(
                # Every worker of this job counts into the driver's metrics folder.
                runtime_env={"env_vars": worker_env},
                # "local" starts a fresh Ray even if `ray start` left a cluster on this machine:
                # joining one is what --ray-address is for.
                address=address or "local",
                num_cpus=cfg.runtime.num_cpus if address is None else None,
                include_dashboard=False,
                log_to_driver=debug,
                logging_level=logging.INFO if debug else logging.ERROR,
                configure_logging=True,
                # Ray's GCS keeps the events of the last 100 000 tasks (about 500 B each) for its state
                # API and dashboard; every actor call of a stream is a task, so a 24/7 service grew
                # the GCS by ~30 MiB in its first two hours of media (benchmarks/bench_soak.py).
                # avfuse reads none of it: a local Ray does not record them (a cluster's head keeps
                # the last few thousand, k8s/base/raycluster.yaml).
                **({} if address else {"_system_config": {"task_events_report_interval_ms": 0,
                                                          "task_events_max_num_task_in_gcs": GCS_TASK_EVENTS}}),
            )
    except ConnectionError as exc:  # Ray Client's timeout, a head that is not up yet
        reason = " ".join(str(exc).split())  # Ray Client's reasons span lines
        raise ConnectionError(f"Ray at {address} is not reachable: {reason}") from None
    finally:
        os.environ[metrics.MULTIPROC_ENV] = folder


def start_node_exporters(port: int, include_driver_node: bool = False) -> list:
    """One NodeExporter on every other alive node of the cluster, each on ``port``.

    Nodes that join later are not covered until the next start (see the README).
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return [NodeExporter.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote(port)
            for node in ray.nodes() if node["Alive"] and (include_driver_node or node["NodeID"] != here)]
