"""The names of ImageNet-1k's 1000 classes, in the order image classifiers output them.

Read from ``operators/data/imagenet_classes.txt``, a copy of torchvision's
``_IMAGENET_CATEGORIES`` (BSD-3-Clause), so that a process that only names tags
(a stream actor) needs neither torch nor torchvision.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    text = resources.files("operators.data").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())
