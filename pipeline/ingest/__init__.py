"""Ingest: media in. PyAV decoding into timed chunks, audio rows and patches, Kafka media segments,
and the egress guard on what an open may reach.

May import ``pipeline.core``, ``pipeline.observe`` and ``operators``; nothing above them.
"""
