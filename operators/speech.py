"""Speech activity: silero-vad's speech probability for every 32 ms of one audio stream.

Contract of ``SpeechActivity`` (one instance per stream; it holds that stream's state):

- Construction: ``SpeechActivity(sample_rate_hz)`` loads the TorchScript model bundled in the
  ``silero-vad`` package (no download, works offline). Only 8000 and 16000 Hz are supported,
  as by silero itself; there is no resampling here (the pipeline already resamples to
  ``audio.sample_rate_hz``), so any other rate raises ``UnsupportedSampleRateError``. Without
  the package it raises ``SpeechNotInstalledError``. Both are ``SpeechUnavailableError``,
  whose message is one line for the user.
- Input: ``feed(samples_f32, start_s)``: mono float32 [N] in [-1, 1] at ``sample_rate_hz``
  and the time of ``samples_f32[0]`` in seconds on the stream clock. Pieces may have any
  length (0 too) and must come in time order. A piece that starts within ``gap_tolerance_s``
  of the end of the previous one continues it (its times then follow from the sample count,
  so rounding in ``start_s`` never shifts windows). Any other start (a PTS gap, or an
  overlap) begins a new run: the leftover samples of the old run (less than one window) are
  dropped and the model state is reset, since the context before a gap says nothing about
  the audio after it.
- Output: ``(prob_f32 [M], t_s [M] float64)``: silero's speech probability (0..1) of every
  window completed by this piece, and the time of each window's first sample. A window is
  512 samples at 16 kHz, 256 at 8 kHz (32 ms either way); windows start at the run's first
  sample and follow each other without overlap. Samples that do not fill a window wait for
  the next piece (a stream's last < 32 ms are never scored).
- Determinism: the same samples with the same run boundaries give the same probabilities,
  however they are cut into pieces (silero's state carries over exactly between windows).
- Device and threads: CPU, one window at a time (silero is recurrent over windows). It sets
  torch's intra-op threads of the process to ``torch_threads`` (1 by default; importing
  silero_vad already does so): a 512-sample window gains nothing from more threads, and the
  per-stream decode process it runs in must not compete for the cores of the shared encoders.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np

SUPPORTED_RATES_HZ = (8000, 16000)
WINDOW_S = 0.032


class SpeechUnavailableError(RuntimeError):
    """Speech activity cannot run here; the message is one line for the user."""


class SpeechNotInstalledError(SpeechUnavailableError):
    """The optional ``silero-vad`` package is not installed."""


class UnsupportedSampleRateError(SpeechUnavailableError, ValueError):
    """silero-vad only scores 8 kHz and 16 kHz audio."""


def unavailable_reason(sample_rate_hz: int) -> str | None:
    """Why ``SpeechActivity(sample_rate_hz)`` would raise, without loading anything; None if it would not."""
    if sample_rate_hz not in SUPPORTED_RATES_HZ:
        return f"silero-vad supports 8000 or 16000 Hz audio, not {sample_rate_hz} Hz"
    if importlib.util.find_spec("silero_vad") is None:
        return "silero-vad is not installed"
    return None


class SpeechActivity:
    """silero-vad over one stream's audio; see the module docstring for the contract."""

    def __init__(self, sample_rate_hz: int, torch_threads: int | None = 1, gap_tolerance_s: float = 0.001):
        if sample_rate_hz not in SUPPORTED_RATES_HZ:
            raise UnsupportedSampleRateError(unavailable_reason(sample_rate_hz))
        try:
            import silero_vad
        except ImportError as exc:
            raise SpeechNotInstalledError("silero-vad is not installed") from exc
        import torch

        self._torch = torch
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        with warnings.catch_warnings():  # deprecation notices of torch.jit.load and importlib.resources
            warnings.simplefilter("ignore", FutureWarning)  # inside silero_vad are not ours to act on
            warnings.simplefilter("ignore", DeprecationWarning)
            self._model = silero_vad.load_silero_vad()
        self.sample_rate_hz = sample_rate_hz
        self.window_samples = 512 if sample_rate_hz == 16000 else 256
        self.gap_tolerance_s = gap_tolerance_s
        self._run_start_s: float | None = None  # time of the first sample of the current run
        self._run_samples = 0  # samples of the current run fed so far (leftover included)
        self._leftover = np.zeros(0, np.float32)
        self.reset()

    @property
    def window_s(self) -> float:
        return self.window_samples / self.sample_rate_hz

    def reset(self) -> None:
        """Forget the stream so far: the next piece starts a new run."""
        self._model.reset_states()
        self._run_start_s = None
        self._run_samples = 0
        self._leftover = np.zeros(0, np.float32)

    def feed(self, samples_f32: np.ndarray, start_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Score the windows this piece completes; returns (prob_f32 [M], t_s [M] float64)."""
        samples = np.asarray(samples_f32, dtype=np.float32).reshape(-1)
        if self._run_start_s is not None:
            expected_s = self._run_start_s + self._run_samples / self.sample_rate_hz
            if abs(start_s - expected_s) > self.gap_tolerance_s:
                self.reset()
        if self._run_start_s is None:
            self._run_start_s = float(start_s)
        first_window = (self._run_samples - self._leftover.size) // self.window_samples
        self._run_samples += samples.size
        pending = np.concatenate([self._leftover, samples]) if self._leftover.size else samples
        n_windows = pending.size // self.window_samples
        self._leftover = pending[n_windows * self.window_samples:].copy()
        probs = np.empty(n_windows, np.float32)
        torch, model = self._torch, self._model
        with torch.inference_mode():
            # A copy: pieces may be read-only views of Ray's object store.
            windows = torch.from_numpy(np.array(pending[: n_windows * self.window_samples]))
            for i, window in enumerate(windows.view(n_windows, self.window_samples)):
                probs[i] = model(window, self.sample_rate_hz).item()
        t_s = self._run_start_s + (first_window + np.arange(n_windows)) * self.window_s
        return probs, t_s.astype(np.float64)
