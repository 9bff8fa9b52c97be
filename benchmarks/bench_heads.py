"""Fusion-stage heads on the available devices: windows/s of fusion + A/V sync (+ an event head),
and how far CUDA's outputs are from the CPU's. No Ray, no decoding: random tokens shaped like
the default pipeline's windows (2 s: 8 frames, 20 audio rows).

    python -m benchmarks.bench_heads [--windows 4096] [--batch 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from operators.event_head import EventHead
from operators.fusion import WindowInput
from pipeline.compute.operator_specs import FusionSpec, spec_of
from pipeline.compute.provenance import trained_behind
from pipeline.compute.stages import FusionStage
from pipeline.core.config import load_config
from pipeline.stream.fusion_io import FusionRequest


def windows(count: int, seed: int = 0) -> list[WindowInput]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        start = float(i)
        out.append(WindowInput(start, rng.standard_normal((8, 256)).astype(np.float32), start + np.arange(8) * 0.25,
                               rng.standard_normal((20, 256)).astype(np.float32), start + np.arange(20) * 0.1))
    return out


def run(device: str, items: list[list[WindowInput]], head_path: str) -> tuple[float, list]:
    cfg = load_config(None, ["profile=signal", f"runtime.device={device}", f"event_head.checkpoint={head_path}"],
                      environ={})
    stage = FusionStage(cfg)
    stage.run_batch([FusionRequest(windows) for windows in items[:2]])  # warm-up (CUDA context, kernels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    results = [stage.run_batch([FusionRequest(item)])[0] for item in items]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = load_config(None, [], environ={})
    with tempfile.TemporaryDirectory() as folder:
        head_path = f"{folder}/head.pt"
        EventHead(spec_of(cfg.fusion, FusionSpec), 256, 256, ["a", "b", "c"]).save(head_path, extra={"trained_behind": trained_behind(cfg)})
        all_windows = windows(args.windows)
        items = [all_windows[i:i + args.batch] for i in range(0, len(all_windows), args.batch)]
        cpu_s, cpu = run("cpu", items, head_path)
        print(f"cpu:  {args.windows / cpu_s:9.0f} windows/s (batches of {args.batch})")
        if torch.cuda.is_available():
            gpu_s, gpu = run("cuda", items, head_path)
            print(f"cuda: {args.windows / gpu_s:9.0f} windows/s ({cpu_s / gpu_s:.1f}x the CPU), {torch.cuda.get_device_name()}")
            sync = max(float(np.abs(a.sync_probs - b.sync_probs).max()) for a, b in zip(cpu, gpu))
            labels = max(float(np.abs(a.label_probs - b.label_probs).max()) for a, b in zip(cpu, gpu))
            lag = max(int(np.abs(a.sync_probs[:, :-1].argmax(1) - b.sync_probs[:, :-1].argmax(1)).max())
                      for a, b in zip(cpu, gpu))
            print(f"cuda vs cpu: sync probabilities max |diff| {sync:.2e} (peak lag moved by at most {lag} bins); "
                  f"event-head probabilities max |diff| {labels:.2e} (fusion under bf16 autocast)")


if __name__ == "__main__":
    main()
