"""Compute placement: the Ray actors, the shared operator stages batched across streams, the decoder
pool, and the driver runtime that runs streams through them.

May import everything below it: ``stream``, ``ingest``, ``output``, ``operators``, ``core``, ``observe``.
"""
