"""avfuse checkpoints: weights saved together with the preprocessing they expect.

A checkpoint is a ``torch.save``d dict::

    {"format": "avfuse-checkpoint", "version": 1, "kind": str,
     "preprocessing": dict, "state_dict": dict, "extra": dict}

Weights trained on 128 px frames or 16 kHz audio are silently wrong on 224 px
frames or 48 kHz audio, so loading compares the recorded preprocessing with
the configured one and refuses to load on any difference.

Also here: ``seeded_init``, which makes untrained weights reproducible, so two
processes built from one config produce identical embeddings.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from operators.checkpoint_errors import CheckpointError, CheckpointMismatchError

FORMAT = "avfuse-checkpoint"
VERSION = 1
INIT_SEED = 0


@contextlib.contextmanager
def seeded_init(seed: int = INIT_SEED) -> Iterator[None]:
    """Build modules under a fixed CPU RNG seed, leaving the global RNG untouched.

    Only the CPU generator is seeded (``devices=[]``): ``torch.manual_seed``
    would also queue a reseed of every CUDA generator, which ``fork_rng`` on
    CPU does not restore. Build on the CPU, then move.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def is_avfuse_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def save_checkpoint(
    path: str | Path,
    kind: str,
    state_dict: Mapping[str, torch.Tensor],
    preprocessing: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write an avfuse checkpoint; tensors are stored on the CPU so any host can load them."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "preprocessing": dict(preprocessing),
        "state_dict": {key: value.detach().cpu() for key, value in state_dict.items()},
        "extra": dict(extra or {}),
    }
    torch.save(payload, str(path))


def read_torch_file(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True`` (no arbitrary code), errors as CheckpointError."""
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"checkpoint {path} is not readable: {reason}") from None


def _normalized(value: Any) -> Any:
    # Serialisation may turn tuples into lists; compare them as the same thing.
    if isinstance(value, (tuple, list)):
        return [_normalized(item) for item in value]
    if isinstance(value, dict):
        return {key: _normalized(item) for key, item in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    a, b = _normalized(a), _normalized(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    numeric = (int, float)
    if isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return type(a) is type(b) and a == b


def preprocessing_differences(recorded: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """``key: checkpoint=X config=Y`` for every key whose values differ (or exist on one side only)."""
    missing = "<absent>"
    lines = []
    for key in sorted(set(recorded) | set(expected)):
        have, want = recorded.get(key, missing), expected.get(key, missing)
        if not _same(have, want):
            lines.append(f"{key}: checkpoint={have!r} config={want!r}")
    return lines


def check_checkpoint(obj: Any, path: str | Path, kind: str, expected_preprocessing: Mapping[str, Any]) -> dict:
    """Validate an already-read checkpoint object; returns it unchanged."""
    if not is_avfuse_checkpoint(obj):
        raise CheckpointError(f"checkpoint {path} is not an avfuse checkpoint")
    if obj.get("version") != VERSION:
        found = obj.get("version")
        raise CheckpointError(f"checkpoint {path} has version {found!r}; this avfuse reads version {VERSION}")
    if obj.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} holds a {obj.get('kind')!r}, not a {kind!r}")
    if not isinstance(obj.get("state_dict"), dict) or not isinstance(obj.get("preprocessing"), dict):
        raise CheckpointError(f"checkpoint {path} lacks a state_dict or preprocessing dict")
    differences = preprocessing_differences(obj["preprocessing"], expected_preprocessing)
    if differences:
        raise CheckpointMismatchError(f"checkpoint {path} was made for other preprocessing: " + "; ".join(differences))
    return obj


def check_trained_behind(obj: dict, path: str | Path, kind: str, expected: Mapping[str, Any]) -> None:
    """A head's checkpoint records what it was trained behind (``extra['trained_behind']``:
    encoders, windows); CheckpointMismatchError when the pipeline would feed it otherwise."""
    recorded = obj.get("extra", {}).get("trained_behind") or {}
    check_checkpoint({**obj, "preprocessing": recorded}, path, kind, expected)


def load_checkpoint(path: str | Path, kind: str, expected_preprocessing: Mapping[str, Any]) -> dict:
    """Read and validate an avfuse checkpoint of ``kind`` made for ``expected_preprocessing``."""
    return check_checkpoint(read_torch_file(path), path, kind, expected_preprocessing)


def load_state_strict(
    module: nn.Module,
    state_dict: Mapping[str, Any],
    path: str | Path,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load every parameter and buffer of ``module`` from ``state_dict``, or raise CheckpointError.

    Keys starting with one of ``ignore_prefixes`` are dropped first (e.g. the
    classifier a backbone no longer has). Any other missing key, unexpected key
    or shape difference is an error naming the first few offenders.
    """
    state = {k: v for k, v in state_dict.items() if not k.startswith(ignore_prefixes)}
    own = module.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [
        f"{k} has shape {list(getattr(state[k], 'shape', []))}, model {list(own[k].shape)}"
        for k in own
        if k in state and getattr(state[k], "shape", None) != own[k].shape
    ]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"checkpoint {path} does not fit the model: " + ", ".join(problems[:3]) + more)
    module.load_state_dict(state, strict=True)


def load_module_checkpoint(module: nn.Module, path: str | Path, kind: str) -> None:
    """Load an avfuse checkpoint of ``kind`` into ``module``, whose ``preprocessing`` it must match."""
    checkpoint = load_checkpoint(path, kind, module.preprocessing)
    load_state_strict(module, checkpoint["state_dict"], path)
