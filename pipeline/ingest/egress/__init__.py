"""The egress guard: which URIs and addresses a job may open, enforced on every connection FFmpeg makes
(a forward HTTP proxy and an RTSP relay on loopback).

Part of ``ingest``; imports only ``pipeline.core``.
"""
