"""``avfuse report``: render the JSONL records of a replay (or of the service) into one self-contained
HTML file, a timeline per stream of what avfuse understood. ``load`` reads and checks the records,
``lanes`` turns events into drawable lanes, ``curves`` the ``signals`` records into downsampled curves,
``thumbnails`` takes one small JPEG per scene from the source media with PyAV, ``view`` assembles what
the page draws, ``page`` / ``page_js`` hold the inline HTML, CSS and JavaScript, and ``render`` writes the
file and is the command's entry point. The page needs no network: no CDN, no fetch, pictures embedded.
This package imports only the standard library, numpy, PyAV and ``pipeline.core.errors``.
"""

from __future__ import annotations

__all__ = ["ReportResult", "main", "render_report"]


def __getattr__(name: str):  # lazily: importing the package must not import PyAV and numpy
    if name in __all__:
        from pipeline.report import render

        return getattr(render, name)
    raise AttributeError(name)
