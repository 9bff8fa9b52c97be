"""``avfuse`` command line: replay files, run the Kafka service, write the sample clip.

Exit codes of ``replay``: 0 every stream succeeded; 1 a stream failed (the
others still completed); 2 usage or configuration error; 130 interrupted.
``run``: 0 after a SIGTERM drain; 1 the service could not go on (the broker
unreachable at start, an exactly-once transaction failed: restart it); 2 usage.
``exporter``: 0 after SIGTERM; 1 its port or folder is unusable; 2 usage.
``search``: 0 results or "no match"; 2 usage or a file that is no avfuse records (pipeline/search/cli.py).
``report``: 0 written; 2 usage, a missing file or no avfuse records; 1 anything else (pipeline/report/command.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.core.config import Config, ConfigError, config_to_yaml, load_config
from pipeline.core.errors import OperatorLoadError, ServiceError, one_line
from pipeline.observe.logs import setup_logging
from pipeline.report.command import add_report_parser, run_report
from pipeline.search.cli import add_search_parser, run_search
from pipeline.training.commands import add_train_parser

EXIT_OK, EXIT_STREAM_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
log = logging.getLogger("avfuse")


def _common(parser: argparse.ArgumentParser, ray: bool = True) -> None:
    parser.add_argument("-c", "--config", help="YAML config file (defaults apply to unset keys)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key; repeatable")
    parser.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    if ray:
        parser.add_argument("--ray-address", help="join an existing Ray cluster (e.g. auto or ray://head:10001)")
    parser.add_argument("--debug", action="store_true", help="verbose logs and tracebacks")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="text (default) or one JSON object per line, with stream_id and stage")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avfuse", description="Streaming audio-visual video understanding.")
    sub = parser.add_subparsers(dest="command", required=True)
    replay = sub.add_parser("replay", help="replay video files through the pipeline")
    replay.add_argument("paths", nargs="+", metavar="PATH", help="video files or URLs PyAV can open")
    replay.add_argument("--out", help="JSONL file for every record (default: records.jsonl from the config)")
    replay.add_argument("--realtime", action="store_true", help="pace decoding at media speed")
    replay.add_argument("--no-progress", action="store_true", help="no progress bars")
    replay.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve /metrics, /healthz, /readyz on PORT while the replay runs")
    replay.add_argument("--metrics-textfile", metavar="PATH",
                        help="write the final metrics here when the replay ends (node_exporter textfile "
                             "collector format; name it *.prom)")
    replay.add_argument("--report", metavar="REPORT.html",
                        help="also render the records (--out) as an HTML timeline here, thumbnails from PATHs")
    _common(replay)
    run = sub.add_parser("run", help="the Kafka service: consume jobs and media segments until SIGTERM")
    run.add_argument("--metrics-port", type=int, metavar="PORT", help="override metrics.port")
    _common(run)
    exporter = sub.add_parser("exporter", help="serve a node's metrics folder (metrics.dir) on metrics.port: "
                                                "the scrape target beside a Ray container")
    exporter.add_argument("--reap-dead-processes", action="store_true",
                          help="drop the live gauges of processes that ended (the pod must share its "
                               "process namespace with the Ray container)")
    _common(exporter, ray=False)
    sample = sub.add_parser("sample", help="write the synthetic demo clip with known events")
    sample.add_argument("out", metavar="OUT.mp4")
    add_train_parser(sub)
    add_search_parser(sub)
    add_report_parser(sub)
    return parser


def _load(args: argparse.Namespace) -> Config:
    sets = list(args.sets)
    if getattr(args, "ray_address", None):
        sets.append(f"runtime.ray_address={args.ray_address}")
    if getattr(args, "realtime", False):
        sets.append("decode.realtime=true")
    if getattr(args, "out", None):
        sets.append(f"records.jsonl={args.out}")
    return load_config(args.config, sets)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `avfuse train` records its command
    # The service is watched through its logs; a replay through its terminal output.
    quiet = logging.INFO if args.command in ("run", "train", "exporter") else logging.WARNING
    setup_logging(logging.DEBUG if getattr(args, "debug", False) else quiet, getattr(args, "log_format", "text"))
    if args.command == "search":  # reads records files only: no config, no Ray
        return run_search(args)
    if args.command == "report":  # reads a records file (and media) only: no config, no Ray
        return run_report(args)
    if args.command == "sample":
        from pipeline.app.sample import write_clip

        print(f"wrote {write_clip(args.out)}")
        return EXIT_OK
    try:
        cfg = _load(args)
    except ConfigError as exc:
        print(f"avfuse: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        from pipeline.app.weights_report import weight_lines

        print(config_to_yaml(cfg), end="")
        print("\n".join(weight_lines(cfg)))
        return EXIT_OK
    if args.command == "train":
        return _train(cfg, args)
    if args.command == "exporter":
        return _exporter(cfg, args)
    try:
        if args.command == "run":
            from pipeline.kafka.service import run_service

            return run_service(cfg, args.metrics_port, debug=args.debug)
        from pipeline.app.replay import run_replay

        if args.report and not cfg.records.jsonl:
            print("avfuse: --report renders the records file: give --out too", file=sys.stderr)
            return EXIT_USAGE
        status = run_replay(cfg, args.paths, show_progress=not args.no_progress, debug=args.debug,
                            metrics_port=args.metrics_port, metrics_textfile=args.metrics_textfile,
                            json_logs=args.log_format == "json")
        if args.report:
            report_status = _report(cfg.records.jsonl, args.paths, args.report)
            status = status if report_status == EXIT_OK else max(status, EXIT_STREAM_FAILED)
        return status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OperatorLoadError as exc:  # the config names weights that do not fit it
        print(f"avfuse: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ServiceError as exc:  # restart it (an orchestrator does)
        print(f"avfuse: {exc}", file=sys.stderr)
        return EXIT_STREAM_FAILED
    except Exception as exc:  # the last line of defence: one line unless --debug
        if args.debug:
            raise
        print(f"avfuse: {one_line(exc, with_type=True)}", file=sys.stderr)
        return EXIT_STREAM_FAILED


def _exporter(cfg: Config, args: argparse.Namespace) -> int:
    from pipeline.observe.node_exporter import serve

    if not cfg.metrics.dir or cfg.metrics.port is None:
        print("avfuse: exporter needs metrics.dir (the folder the node's processes count into) and "
              "metrics.port", file=sys.stderr)
        return EXIT_USAGE
    try:
        return serve(cfg.metrics.dir, cfg.metrics.port, args.reap_dead_processes)
    except OSError as exc:  # the port is taken, the folder cannot be made
        print(f"avfuse: exporter: {exc.strerror or exc}: {exc.filename or f'port {cfg.metrics.port}'}",
              file=sys.stderr)
        return EXIT_STREAM_FAILED


def _report(records: str, paths: list[str], out: str) -> int:
    """The replay's report, thumbnails from the files it replayed (URLs are left out)."""
    from pipeline.report.command import run_report

    media = [p for p in paths if Path(p).exists()]
    return run_report(argparse.Namespace(records=records, media=media, out=out, debug=False))


def _train(cfg: Config, args: argparse.Namespace) -> int:
    from operators.checkpoint import CheckpointError
    from pipeline.training.commands import run_train

    try:
        return run_train(cfg, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (CheckpointError, FileNotFoundError, ValueError) as exc:  # bad annotations, clips or weights
        if args.debug:
            raise
        print(f"avfuse: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
