"""The ``avfuse replay`` command: files in, records out, progress on the terminal."""

from __future__ import annotations

import asyncio

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.compute.ray_init import connect_ray, init_metrics
from pipeline.compute.runtime import Pipeline, StreamResult, unique_stream_ids
from pipeline.core.config import Config
from pipeline.observe import metrics
from pipeline.observe.exporter import Exporter, Readiness
from pipeline.output.sinks import ErrorLinesSink, FanoutSink, JsonlSink, LogSink, Sink, StdoutSink

EXIT_OK, EXIT_STREAM_FAILED, EXIT_INTERRUPTED = 0, 1, 130


class ProgressBars:
    """One bar per stream: media seconds done of the total (when known) and x real time."""

    def __init__(self, console: Console, stream_ids: list[str], enabled: bool):
        self.progress = Progress(
            TextColumn("{task.fields[stream_id]:<24}"), BarColumn(),
            TextColumn("{task.completed:6.1f}s / {task.fields[total_s]}"),
            TextColumn("{task.fields[speed]}"), TimeElapsedColumn(),
            console=console, disable=not enabled, transient=False,
        )
        # Clocks start at a stream's first progress, so Ray start-up does not count against its speed.
        self.tasks = {sid: self.progress.add_task(sid, total=None, start=False, stream_id=sid, total_s="?", speed="")
                      for sid in stream_ids}

    def update(self, stream_id: str, processed_s: float, duration_s: float | None) -> None:
        task_id = self.tasks[stream_id]
        if not self.progress.tasks[task_id].started:
            self.progress.start_task(task_id)
        elapsed = self.progress.tasks[task_id].elapsed or 0.0
        speed = f"{processed_s / elapsed:5.1f}x" if elapsed > 0 else ""
        self.progress.update(task_id, completed=processed_s, total=duration_s,
                             total_s=f"{duration_s:.1f}s" if duration_s else "?", speed=speed)


def _results_table(results: list[StreamResult]) -> Table:
    table = Table(title="avfuse replay")
    for column in ("stream", "status", "media s", "wall s", "x realtime", "events", "reason"):
        table.add_column(column)
    for r in results:
        speed = f"{r.processed_s / r.wall_s:.1f}" if r.wall_s > 0 else "-"
        table.add_row(r.stream_id, r.status, f"{r.processed_s:.1f}", f"{r.wall_s:.1f}", speed,
                      str(r.events), r.reason or "")
    return table


def _build_sink(cfg: Config, console: Console, json_logs: bool) -> Sink:
    # With JSON logs stderr is for log aggregators: errors become log entries there too.
    sinks: list[Sink] = [LogSink() if json_logs else ErrorLinesSink()]
    if cfg.records.jsonl:
        sinks.append(JsonlSink(cfg.records.jsonl))
    if cfg.records.stdout:
        sinks.append(StdoutSink(lambda line: console.print(line, markup=False, highlight=False)))
    return FanoutSink(sinks)


def run_replay(cfg: Config, uris: list[str], show_progress: bool, debug: bool = False,
               metrics_port: int | None = None, metrics_textfile: str | None = None,
               json_logs: bool = False) -> int:
    console = Console(stderr=not cfg.records.stdout, highlight=False)
    stream_ids = unique_stream_ids(uris)
    init_metrics(cfg)  # first: it chooses the metrics folder every process counts into
    readiness = Readiness("ray", "operators")
    # Bound before Ray starts, so none of Ray's processes can take the port first,
    # and answering "ray: not yet" while it starts.
    exporter = Exporter(metrics_port, readiness).start() if metrics_port is not None else None
    connect_ray(cfg, debug=debug)
    readiness.set("ray", True)
    sink = _build_sink(cfg, console, json_logs)
    bars = ProgressBars(console, stream_ids, enabled=show_progress and console.is_terminal)
    results: list[StreamResult] = []
    interrupted = False

    async def main() -> None:
        pipeline = Pipeline(cfg)
        await pipeline.warm_up()
        readiness.set("operators", True)
        results.extend(await pipeline.replay(uris, sink, bars.update, stream_ids))

    try:
        with bars.progress:
            asyncio.run(main())
    except KeyboardInterrupt:
        interrupted = True
    finally:
        sink.close()
        if metrics_textfile:
            metrics.write_textfile(metrics_textfile)
        if exporter is not None:
            exporter.stop()
    if results:
        console.print(_results_table(results))
    if cfg.records.jsonl:
        console.print(f"records written to {cfg.records.jsonl}")
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if all(r.status == "ok" for r in results) else EXIT_STREAM_FAILED
