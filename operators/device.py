"""Where operators run: device resolution, mixed precision, and numpy in/out.

Operators take torch tensors on their own device; the pipeline moves numpy
arrays (Ray's object store hands them out zero-copy). ``run_on_device`` is the
one bridge between the two, so every encoder converts the same way.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import warnings
from typing import Callable, ContextManager

import numpy as np
import torch
from torch import nn

_CUDA_SPEC = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(spec: str) -> torch.device:
    """Turn ``runtime.device`` ('auto', 'cpu', 'cuda', 'cuda:N') into a torch.device.

    'auto' picks CUDA device 0 when CUDA is usable, else the CPU. Asking for
    CUDA on a machine without it raises ValueError rather than silently
    running on the CPU at a fraction of the expected throughput.
    """
    text = spec.strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA_SPEC.match(text)
    if match is None:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available on this machine")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device("cuda", index)


def autocast_for(device: torch.device | str) -> ContextManager:
    """Mixed precision for inference on ``device``.

    CUDA: bf16 autocast where the GPU supports it (same exponent range as
    fp32, so no overflow in activations), else fp16. CPU: no autocast, because
    CPU bf16 kernels are slower than fp32 on most x86 hosts.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU if it has none)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


def tensor_from_numpy(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory (no copy) when torch allows it.

    Arrays from Ray's object store are read-only; torch warns about that on
    every call, but the operators never write to their inputs, so the warning
    is silenced. Negative strides (e.g. ``frames[..., ::-1]``) cannot be shared
    and cost one copy.
    """
    if any(stride < 0 for stride in array.strides):
        array = np.ascontiguousarray(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def run_on_device(fn: Callable[[torch.Tensor], torch.Tensor], array: np.ndarray, device: torch.device) -> np.ndarray:
    """Apply ``fn`` to ``array`` on ``device`` for inference; returns float32 numpy on the host."""
    tensor = tensor_from_numpy(array).to(device)
    with torch.inference_mode(), autocast_for(device):
        out = fn(tensor)
    return out.float().cpu().numpy()
