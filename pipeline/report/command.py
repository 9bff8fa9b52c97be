"""``avfuse report RECORDS.jsonl [--media DIR_OR_FILE ...] [-o REPORT.html]``: its parser and its run.

Light to import (the avfuse CLI builds every sub-parser at start): rendering, numpy and PyAV load only
when the command runs. Exit codes: 0 written; 2 usage, a missing file, or a file that is not avfuse
records (one line on stderr); 1 anything else (one line unless --debug). Notes about records left out
go to stderr, as they go onto the page.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.core.errors import one_line

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DESCRIPTION = ("Render the JSONL records of a replay as one self-contained HTML file: per stream, a timeline of "
               "its events, tags, speech and transcript, signal curves and A/V offset, with scene thumbnails "
               "taken from the source media when --media names it.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("records", metavar="RECORDS.jsonl", help="records of a replay (avfuse replay --out)")
    parser.add_argument("--media", action="append", default=[], metavar="DIR_OR_FILE",
                        help="source media (files, or folders of them) for one thumbnail per scene; repeatable")
    parser.add_argument("-o", "--out", metavar="REPORT.html", help="default: next to the records, as NAME.html")
    parser.add_argument("--debug", action="store_true", help="tracebacks")


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    """``avfuse report``, for the avfuse CLI's sub-parsers."""
    add_arguments(sub.add_parser("report", help="render records as one self-contained HTML timeline",
                                 description=DESCRIPTION))


def run_report(args: argparse.Namespace) -> int:
    from pipeline.report.load import NotRecordsError
    from pipeline.report.render import render_report

    try:
        result = render_report(args.records, args.media, args.out)
    except FileNotFoundError as exc:
        print(f"avfuse: report: {f'{exc.strerror}: {exc.filename}' if exc.filename else exc}", file=sys.stderr)
        return EXIT_USAGE
    except (NotRecordsError, IsADirectoryError, PermissionError) as exc:
        print(f"avfuse: report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # the last line of defence: one line unless --debug
        if args.debug:
            raise
        print(f"avfuse: report: {one_line(exc, with_type=True)}", file=sys.stderr)
        return EXIT_FAILED
    for note in result.notes:
        print(f"avfuse: report: {note}", file=sys.stderr)
    print(f"wrote {result.out_path} ({result.streams} stream{'s' * (result.streams != 1)}, "
          f"{result.size_bytes / 1024:.0f} KiB, {result.thumbnails} thumbnails)")
    return EXIT_OK
