"""``avfuse search QUERY [RECORDS.jsonl ...] [--top K] [--json] [--index DIR]``.

Exit codes: 0 results or "no match"; 2 usage, a file that is not avfuse records, or the
text model missing; 1 anything else; 130 interrupted. Results go to stdout, notes (a
truncated last line, skipped record types) to stderr. Starts no Ray and reads no config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipeline.search.rank import FLOOR

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
log = logging.getLogger("avfuse.search")


def add_search_parser(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser(
        "search", help="find moments in records files: words said, sounds heard, things seen",
        description="Rank the moments of avfuse JSONL records against QUERY: exact phrases first (a transcript's "
                    "timed to its words), then by all-MiniLM-L6-v2 similarity above a floor.")
    search.add_argument("query", metavar="QUERY", help='words to find; "quoted" parts must occur as written')
    search.add_argument("paths", nargs="*", metavar="RECORDS.jsonl", help="records files (avfuse replay --out)")
    search.add_argument("--top", type=int, default=10, metavar="K", help="at most K results (default 10)")
    search.add_argument("--json", action="store_true", help="one JSON object per result")
    search.add_argument("--index", metavar="DIR",
                        help="keep embeddings in DIR and reuse them; without files, search every file in it")
    search.add_argument("--min-score", type=float, default=FLOOR, metavar="S",
                        help=f"similarity floor for results that are no exact phrase (default {FLOOR})")
    search.add_argument("--debug", action="store_true", help="verbose logs and tracebacks")


def run_search(args: argparse.Namespace) -> int:
    if args.top < 1:
        print("avfuse: search: --top must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if not args.paths and not args.index:
        print("avfuse: search: name records files, or an --index DIR to search", file=sys.stderr)
        return EXIT_USAGE
    from operators.checkpoint import CheckpointError
    from pipeline.search.moments import SearchInputError

    try:
        results, notes = search(args.query, args.paths, args.top, args.index, args.min_score)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (SearchInputError, CheckpointError) as exc:
        if args.debug:
            raise
        print(f"avfuse: search: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # the last line of defence: one line unless --debug
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"avfuse: search: {type(exc).__name__}: {first}", file=sys.stderr)
        return EXIT_FAILED
    for note in notes:
        print(f"avfuse: search: {note}", file=sys.stderr)
    if not results:
        print("no match", file=sys.stderr if args.json else sys.stdout)
    for result in results:
        print(json.dumps(result.to_dict(), ensure_ascii=False) if args.json else result.line())
    return EXIT_OK


def search(query: str, paths: list[str], top_k: int = 10, index_dir: str | None = None, floor: float = FLOOR,
           encoder=None):
    """(results, notes) of ``query`` over ``paths`` (and the index in ``index_dir``, if given).

    ``encoder``: a TextEncoder to reuse (None: load the packaged one).
    """
    from operators.text_embedding import MODEL_NAME, load_text_encoder
    from pipeline.search.index import SearchIndex
    from pipeline.search.moments import read_moments
    from pipeline.search.rank import rank
    from pipeline.search.table import build_table

    resolved = list(dict.fromkeys(str(Path(p).resolve()) for p in paths))
    encoder = encoder or load_text_encoder()
    if index_dir:
        index = SearchIndex(index_dir, MODEL_NAME, encoder.weights.sha256)
        tables, _ = index.tables(resolved or None, encoder)
    else:
        tables = [build_table(read_moments(path), encoder) for path in resolved]
    notes = [note for table in tables for note in table.notes]
    return rank(query, tables, encoder, top_k, floor), notes
