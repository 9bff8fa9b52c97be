"""Observability: Prometheus metrics of every stage, the scrape endpoints, and log output.

Ground floor beside ``core``: every stage may import it; it imports only ``pipeline.core``.
"""
