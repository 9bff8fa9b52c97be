"""The top floor: the ``avfuse`` command line, ``avfuse replay``, the sample clip, the weights report.

May import anything in ``pipeline``; nothing imports it.
"""
