"""Search: find moments again in the JSONL records of earlier replays (``avfuse search``).

Records in, ranked moments out: ``moments`` turns records into searchable moments
(stream, span, kind, the texts that describe them), ``table`` embeds a file's moments
with all-MiniLM-L6-v2 (``operators.text_embedding``), ``rank`` scores them against a
query (exact phrases first, then cosine above a floor), ``index`` keeps the embedded
tables on disk so a file is embedded once, and ``cli`` is the subcommand.

May import ``operators`` and the standard library, numpy and torch; nothing else of
``pipeline`` (it reads records as JSON, so it starts no Ray and needs no config).
"""
