"""The taggers' class lists as ``Vocabulary``s: AudioSet (with its ontology) and ImageNet.

Read once per process from the operators' data files; the driver needs only names and the
hierarchy, never the models.
"""

from __future__ import annotations

from functools import lru_cache

from pipeline.stream.tag_events import Vocabulary


@lru_cache(maxsize=1)
def sound_vocabulary() -> Vocabulary:
    from operators.audioset import AudioSetClasses

    classes = AudioSetClasses()
    return Vocabulary(tuple(classes.names), tuple(classes.mids),
                      tuple(tuple(classes.ancestors(i)) for i in range(len(classes.names))))


@lru_cache(maxsize=1)
def sight_vocabulary() -> Vocabulary:
    # The names EfficientNet-Lite0's 1000 outputs stand for, in output order (ImageTagger.labels).
    from operators.imagenet_classes import imagenet_classes

    return Vocabulary(imagenet_classes())
