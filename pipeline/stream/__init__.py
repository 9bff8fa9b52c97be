"""Per-stream logic: everything keyed by one stream_id. The session, where windows are cut
(``alignment``), the detectors, trackers, taggers' events and summaries.

Pure Python and numpy: no torch, no Ray, no PyAV, no Kafka. May import ``pipeline.core``,
``pipeline.observe``, ``pipeline.output`` and the torch-free modules of ``operators``.
"""
