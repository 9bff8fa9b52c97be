"""Pretrained weights through torch.hub's cache, as torchvision and torchaudio fetch them.

Both libraries load published weights with ``torch.hub.load_state_dict_from_url``:
it reads ``<hub dir>/checkpoints/<file name of the URL>`` (hub dir:
``$TORCH_HOME/hub``, by default ``~/.cache/torch/hub``) and downloads the file
there first if it is absent. A connected machine therefore needs no setup; an
offline one needs that exact file copied into the cache. This module names that
file and turns every way the fetch can fail into one CheckpointError line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch

from operators.checkpoint import CheckpointError

# Passed to load_state_dict_from_url: no progress bar in service logs, tensors on
# the CPU (operators move themselves), and no arbitrary pickled code.
DOWNLOAD_KWARGS = {"progress": False, "map_location": "cpu", "weights_only": True}


def hub_cache_file(url: str) -> Path:
    """The file ``torch.hub.load_state_dict_from_url(url)`` reads, or downloads to when absent."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def fetch_hub_state_dict(what: str, url: str, fetch: Callable[[dict], Any], local_key: str) -> Any:
    """Run ``fetch(download_kwargs)``, the library's own loader for ``url``; its result, or CheckpointError.

    ``what`` names the weights for the user ('vision.weights X'); ``local_key``
    is the config key that takes a local copy instead. A file that is absent and
    cannot be downloaded (no network, a firewall, a bad hash) gives one line
    naming the file expected in the cache; a cached file that does not load
    gives one line naming that file.
    """
    cached = hub_cache_file(url)
    try:
        return fetch(dict(DOWNLOAD_KWARGS))
    except Exception as exc:  # urllib, ssl, hash and torch.load errors alike
        reason = _first_line(exc)
        if not cached.is_file():
            raise CheckpointError(
                f"{what}: {cached.name} is not in the torch hub cache and could not be downloaded from {url} "
                f"({reason}); copy that file to {cached} (the cache follows $TORCH_HOME) "
                f"or set {local_key} to a local copy"
            ) from None
        raise CheckpointError(f"{what}: cached file {cached} is not readable: {reason}") from None
