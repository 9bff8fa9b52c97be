"""Speech activity: silero-vad's speech probability for every 32 ms of one audio stream.

Contract of ``SpeechActivity`` (one instance per stream; it holds that stream's state):

- Construction: ``SpeechActivity(sample_rate_hz)`` loads a model bundled in the ``silero-vad``
  package (no download, works offline): at 16 kHz its "sequence" ONNX export, which scores a
  block of windows in one onnxruntime call; at 8 kHz (or without onnxruntime) the TorchScript
  model, one window per call. Both are the same network (probabilities equal to ~1e-6, checked
  by the tests). Only 8000 and 16000 Hz are supported,
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
- Device and threads: CPU, one thread (silero is recurrent over windows: a stream's windows are
  one sequence, never batched across streams). The TorchScript path sets torch's intra-op
  threads of the process to ``torch_threads`` (1 by default; importing silero_vad already does
  so); the ONNX path's session has one intra- and one inter-op thread. Small inputs gain nothing
  from more threads, and the process it runs in must not compete for the encoders' cores.
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
            import silero_vad  # noqa: F401 (the package holds both models)
        except ImportError as exc:
            raise SpeechNotInstalledError("silero-vad is not installed") from exc
        self._windows = (_SequenceWindows() if sample_rate_hz == 16000 and _has_onnxruntime()
                         else _TorchScriptWindows(sample_rate_hz, torch_threads))
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
        self._windows.reset()
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
        # A copy: pieces may be read-only views of Ray's object store.
        windows = np.array(pending[: n_windows * self.window_samples]).reshape(n_windows, self.window_samples)
        probs = self._windows.probs(windows) if n_windows else np.zeros(0, np.float32)
        t_s = self._run_start_s + (first_window + np.arange(n_windows)) * self.window_s
        return probs, t_s.astype(np.float64)


def _has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


class _SequenceWindows:
    """silero's 16 kHz "sequence" ONNX export: one call scores a whole block of windows.

    The same network as the TorchScript model (probabilities equal to ~1e-6 on real speech),
    with its LSTM state (h, c) and each window's 64-sample context carried between calls here,
    so a stream's windows still form one sequence however they arrive. One call per chunk
    instead of one per 32 ms window: ~5x less CPU (0.0045 against 0.024 CPU s per audio second
    on nasa_13013, measured here).
    """

    CONTEXT_SAMPLES = 64
    MAX_FRAMES = 512  # the export's block limit (16.4 s)

    def __init__(self):
        from silero_vad.model import load_silero_vad

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # importlib.resources inside silero_vad
            # Its session: CPU, one intra- and one inter-op thread (the cores are the encoders').
            self._session = load_silero_vad(sequence=True).session

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(self.CONTEXT_SAMPLES, np.float32)

    def probs(self, windows: np.ndarray) -> np.ndarray:
        """[N, 512] consecutive windows -> [N] speech probabilities; the state carries on."""
        out = []
        for first in range(0, len(windows), self.MAX_FRAMES):
            block = windows[first:first + self.MAX_FRAMES]
            contexts = np.concatenate([self._context[None], block[:-1, -self.CONTEXT_SAMPLES:]])
            values, self._h, self._c = self._session.run(
                ["speech_probs", "hn", "cn"],
                {"input": np.concatenate([contexts, block], axis=1), "h": self._h, "c": self._c})
            self._context = block[-1, -self.CONTEXT_SAMPLES:].copy()
            out.append(np.asarray(values, np.float32).reshape(-1))
        return np.concatenate(out)


class _TorchScriptWindows:
    """silero's TorchScript model, one window per call (8 kHz, or without onnxruntime)."""

    def __init__(self, sample_rate_hz: int, torch_threads: int | None):
        import silero_vad
        import torch

        self._torch, self.sample_rate_hz = torch, sample_rate_hz
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        with warnings.catch_warnings():  # deprecation notices of torch.jit.load and importlib.resources
            warnings.simplefilter("ignore", FutureWarning)  # inside silero_vad are not ours to act on
            warnings.simplefilter("ignore", DeprecationWarning)
            self._model = silero_vad.load_silero_vad()

    def reset(self) -> None:
        self._model.reset_states()

    def probs(self, windows: np.ndarray) -> np.ndarray:
        probs = np.empty(len(windows), np.float32)
        with self._torch.inference_mode():
            for i, window in enumerate(self._torch.from_numpy(windows)):
                probs[i] = self._model(window, self.sample_rate_hz).item()
        return probs
