"""MomentTable: one records file's moments with the embeddings of their texts.

Each distinct match text of the file is embedded once (a day of records names "Music"
in thousands of events), and the embeddings are kept as float16, [texts, 384]: half the
bytes of float32 on disk, and cosines within ~1e-3 of float32's. A plain search and an
index build the same tables by the same code (one file per call to ``encode``), so both
rank on the same numbers.

``refs_*`` flatten the moments' ``MatchText``s in moment order: ref r belongs to moment
``ref_moment[r]``, compares with text ``ref_text[r]`` and counts ``ref_weight[r]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.search.moments import FileMoments, Moment, words_of

EMBED_DTYPE = np.float16


@dataclass
class MomentTable:
    path: Path
    moments: list[Moment]
    texts: list[str]  # distinct match texts, first appearance first
    embeddings: np.ndarray  # EMBED_DTYPE [len(texts), D], unit rows
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        position = {text: i for i, text in enumerate(self.texts)}
        counts = [len(m.texts) for m in self.moments]
        self.ref_moment = np.repeat(np.arange(len(self.moments), dtype=np.int64), counts)
        self.ref_text = np.array([position[t.text] for m in self.moments for t in m.texts], dtype=np.int64)
        self.ref_weight = np.array([t.weight for m in self.moments for t in m.texts], dtype=np.float32)
        self.ref_start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if counts else \
            np.zeros(0, dtype=np.int64)
        # " a b c " per text, so a phrase's words are found with `in`, on word boundaries.
        self.padded_words = [f" {' '.join(words_of(t))} " for t in self.texts]


def distinct_texts(moments: list[Moment]) -> list[str]:
    return list(dict.fromkeys(t.text for m in moments for t in m.texts))


def build_table(found: FileMoments, encoder) -> MomentTable:
    """Embed ``found``'s distinct texts with ``encoder`` (a TextEncoder) into a MomentTable."""
    texts = distinct_texts(found.moments)
    embeddings = encoder.encode(texts).astype(EMBED_DTYPE)
    return MomentTable(found.path, found.moments, texts, embeddings, list(found.notes))
