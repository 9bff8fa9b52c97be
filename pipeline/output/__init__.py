"""Output: the record dataclasses, their JSON Schemas, and the sinks records go to (JSONL, stdout).

May import ``pipeline.core`` and ``pipeline.observe`` only.
"""
