"""SearchIndex: embedded moment tables kept on disk, so a records file is embedded once.

Layout of the index folder::

    index.json           {"format", "version", "model", "model_sha256",
                          "files": {resolved path: {"size", "mtime_ns", "key", "moments"}}}
    <key>.npz            "embeddings": float16 [distinct texts, 384]
    <key>.jsonl          line 1 {"path", "texts", "notes"}; then one moment per line

``key`` is the sha256 of the resolved path (16 hex). A file is embedded again when its
size or mtime changed since, a file that no longer exists is dropped (with its two
files), and the whole index is rebuilt when it was made by another format or other
weights (the model's sha256). Files named in a search are added; a search that names
none searches every file in the index. Every file is written to a temporary name and
renamed, so a search that runs beside another sees whole files; two that add the same
file at once both embed it and the last manifest wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from operators.weights_cache import write_atomically
from pipeline.search.moments import Moment, SearchInputError, read_moments
from pipeline.search.table import EMBED_DTYPE, MomentTable, build_table

log = logging.getLogger(__name__)

FORMAT = "avfuse-search-index"
# 1: first. Bump when moments.py makes other moments from the same records, so old
# indexes are rebuilt rather than searched with stale texts.
VERSION = 1
MANIFEST = "index.json"


@dataclass
class IndexUpdate:
    """What one search did to the index (resolved paths)."""

    embedded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _key(path: str) -> str:
    return hashlib.sha256(path.encode("utf-8")).hexdigest()[:16]


class SearchIndex:
    def __init__(self, folder: str | Path, model_name: str, model_sha256: str):
        self.folder = Path(folder)
        self.model_name, self.model_sha256 = model_name, model_sha256
        if self.folder.exists() and not self.folder.is_dir():
            raise SearchInputError(f"index {self.folder}: is a file, not a folder")
        self.files: dict[str, dict] = self._read_manifest()

    def _read_manifest(self) -> dict[str, dict]:
        path = self.folder / MANIFEST
        if not path.is_file():
            return {}
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("search index %s is unreadable (%s): rebuilding it", path, exc)
            return {}
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise SearchInputError(f"index {self.folder}: {MANIFEST} is no {FORMAT}; name another folder")
        if manifest.get("version") != VERSION or manifest.get("model_sha256") != self.model_sha256:
            log.info("search index %s was made by version %s / weights %s: rebuilding it", self.folder,
                     manifest.get("version"), str(manifest.get("model_sha256"))[:16])
            return {}
        return dict(manifest.get("files") or {})

    def _write_manifest(self) -> None:
        manifest = {"format": FORMAT, "version": VERSION, "model": self.model_name,
                    "model_sha256": self.model_sha256, "files": self.files}
        text = json.dumps(manifest, indent=1, sort_keys=True)
        write_atomically(self.folder / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def _artifacts(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.npz", self.folder / f"{key}.jsonl"

    def _load(self, path: str, entry: dict) -> MomentTable | None:
        npz, jsonl = self._artifacts(entry["key"])
        try:
            with np.load(npz, allow_pickle=False) as arrays:
                embeddings = arrays["embeddings"].astype(EMBED_DTYPE)
            with open(jsonl, encoding="utf-8") as handle:
                header = json.loads(handle.readline())
                moments = [Moment.from_dict(json.loads(line)) for line in handle]
            if (header.get("path") != path or len(header["texts"]) != len(embeddings)
                    or len(moments) != entry["moments"]):
                raise ValueError("its files disagree with index.json")
            return MomentTable(Path(path), moments, list(header["texts"]), embeddings, list(header.get("notes") or []))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("search index: %s of %s is unusable (%s): embedding it again", entry["key"], path, exc)
            return None

    def _save(self, path: str, table: MomentTable, stat: os.stat_result) -> None:
        key = _key(path)
        npz, jsonl = self._artifacts(key)

        def write_npz(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # a file object: np.savez would append .npz to a name
                np.savez(handle, embeddings=table.embeddings)

        def write_jsonl(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(json.dumps({"path": path, "texts": table.texts, "notes": table.notes}) + "\n")
                for moment in table.moments:
                    handle.write(json.dumps(moment.to_dict(), separators=(",", ":")) + "\n")

        write_atomically(npz, write_npz)
        write_atomically(jsonl, write_jsonl)
        self.files[path] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "key": key,
                            "moments": len(table.moments)}

    def _drop(self, path: str) -> None:
        entry = self.files.pop(path)
        for artifact in self._artifacts(entry["key"]):
            artifact.unlink(missing_ok=True)

    def _table(self, path: str, encoder, update: IndexUpdate) -> MomentTable:
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise SearchInputError(f"{path}: {exc.strerror or exc}") from None
        entry = self.files.get(path)
        if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            table = self._load(path, entry)
            if table is not None:
                update.reused.append(path)
                return table
        table = build_table(read_moments(path), encoder)
        self._save(path, table, stat)
        update.embedded.append(path)
        return table

    def tables(self, paths: list[str | Path] | None, encoder) -> tuple[list[MomentTable], IndexUpdate]:
        """The tables of ``paths`` (None: every indexed file), embedding with ``encoder`` what is new or changed.

        Raises SearchInputError for a named file that is missing or not avfuse records
        (the index is left as it was for that file).
        """
        update = IndexUpdate()
        for path in [p for p in self.files if not Path(p).is_file()]:
            self._drop(path)
            update.dropped.append(path)
        wanted = list(self.files) if paths is None else [str(Path(p).resolve()) for p in paths]
        tables = []
        try:
            for path in dict.fromkeys(wanted):
                tables.append(self._table(path, encoder, update))
        finally:  # what was embedded before a bad file stays embedded
            if update.embedded or update.dropped:
                self._write_manifest()
        log.info("search index %s: embedded %d files, reused %d, dropped %d", self.folder, len(update.embedded),
                 len(update.reused), len(update.dropped))
        return tables, update
