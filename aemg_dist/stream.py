"""Real-time decisions: raw samples in chunks -> one decision per hop, using only causal processing.

The causal path mirrors harmonization (preprocessing/harmonize.py) with filters that never look ahead,
as plain numpy/scipy with their state carried from chunk to chunk:

1. band-pass and declared notches: the same Butterworth and iirnotch designs, each run **twice forward**
   (`sosfilt` with `zi`). Harmonization filters forward and backward (zero phase), whose magnitude is |H|^2;
   two forward passes have the same magnitude and only a different phase, so amplitude and spectral
   features see what the encoder was fine-tuned on. The filter state starts at the steady state of the
   first sample, so a DC offset gives no start-up step;
2. resampling to the corpus rate: resample_poly's polyphase FIR (`PolyphaseResampler`) computed only
   from samples already seen, i.e. its output delayed by half the filter instead of centred;
3. normalization with the person's calibration statistics stored in the model folder (allowed data:
   nothing computed from the stream itself), the noise floor from the same calibration;
4. online event detection: every hop, the last `length_s` of processed samples are tokenized
   (events against the stored floor) and classified; nothing after the window's end is read.

Chunked and one-shot processing are the same computation (the same recurrences in the same order), so
`aemg predict --stream` and `aemg predict` on a file give the same decisions. Against the zero-phase
path (`zero_phase_windows`, what fine-tuning saw) decisions agree once the filters have warmed up,
up to the few milliseconds of causal delay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import signal

from aemg_dist.decoder import Decoder
from preprocessing.harmonize import denormalize, harmonize, resample_ratio, valid_band
from preprocessing.recording import RawRecording


class PolyphaseResampler:
    """Causal streaming resampling by up/down: the output of `scipy.signal.upfirdn(h, x, up, down)` with
    resample_poly's Kaiser FIR h, produced chunk by chunk from the last len(h)/up input samples."""

    def __init__(self, up: int, down: int, n_channels: int):
        self.up, self.down = up, down
        self.n_in = self.n_out = 0
        if up == down:  # the source is at the corpus rate already
            return
        max_rate = max(up, down)
        h = signal.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up
        self.taps = math.ceil(h.size / up)
        # phase p, tap k -> h[p + k * up]: output m reads inputs i_max - k with phase m * down - i_max * up
        self.poly = np.pad(h, (0, self.taps * up - h.size)).reshape(self.taps, up).T
        self.history = np.zeros((self.taps - 1, n_channels))  # the stream starts from silence

    def process(self, x: np.ndarray) -> np.ndarray:
        if self.up == self.down:
            return x
        buffer = np.concatenate([self.history, x])  # buffer[j] is input n_in - (taps - 1) + j
        n_in = self.n_in + x.shape[0]
        n_out = -(-n_in * self.up // self.down)  # outputs whose newest input has arrived
        m = np.arange(self.n_out, n_out)
        newest = m * self.down // self.up
        phase = m * self.down - newest * self.up
        rows = (newest - (self.n_in - (self.taps - 1)))[:, None] - np.arange(self.taps)[None, :]
        y = np.einsum("mk,mkc->mc", self.poly[phase], buffer[rows])
        self.history = buffer[buffer.shape[0] - (self.taps - 1):]
        self.n_in, self.n_out = n_in, n_out
        return y


class CausalFrontEnd:
    """Raw samples (source units, source rate) -> normalized samples at the corpus rate, chunk by chunk."""

    def __init__(self, decoder: Decoder, source_fs: float):
        cfg = decoder.config
        band = valid_band(source_fs, cfg.harmonize)
        sections = [signal.butter(cfg.harmonize.filter_order, band, btype="bandpass", fs=source_fs, output="sos")]
        if cfg.harmonize.notch:
            sections += [signal.tf2sos(*signal.iirnotch(f0, cfg.harmonize.notch_q, fs=source_fs))
                         for f0 in cfg.notch_hz if band[0] < f0 < band[1]]
        self.sos = np.vstack(sections * 2)  # twice forward: the zero-phase filters' magnitude (module docstring)
        ratio = resample_ratio(source_fs, cfg.harmonize.target_fs)
        self.resampler = PolyphaseResampler(ratio.numerator, ratio.denominator, decoder.config.n_channels)
        self.decoder = decoder
        self.zi: np.ndarray | None = None

    def process(self, chunk: np.ndarray) -> np.ndarray:
        x = np.asarray(chunk, dtype=np.float64)
        if x.shape[0] == 0:
            return np.zeros((0, x.shape[1]), dtype=np.float32)
        if self.zi is None:  # steady state for the first sample: a DC offset starts settled
            self.zi = signal.sosfilt_zi(self.sos)[:, :, None] * x[0][None, None, :]
        filtered, self.zi = signal.sosfilt(self.sos, x, axis=0, zi=self.zi)
        return self.decoder.normalize(self.resampler.process(filtered))


@dataclass(frozen=True)
class Decisions:
    """Per-window decisions: window end (s of stream, corpus clock) and class probabilities (W, K)."""

    end_s: np.ndarray
    probabilities: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return np.argmax(self.probabilities, axis=1) if self.probabilities.size else np.zeros(0, dtype=np.int64)


class StreamDecoder:
    """Feed raw chunks, get a decision for every hop whose window is complete (`Decisions`)."""

    def __init__(self, decoder: Decoder, source_fs: float | None = None):
        cfg = decoder.config
        self.decoder = decoder
        self.source_fs = float(source_fs or cfg.source_fs)
        self.front = CausalFrontEnd(decoder, self.source_fs)
        self.length = int(round(cfg.length_s * cfg.fs))
        self.hop = int(round(cfg.hop_s * cfg.fs))
        self.pending = np.zeros((0, cfg.n_channels), dtype=np.float32)  # processed samples from the next window on
        self.pending_start = 0  # corpus-rate index of pending[0]
        self.next_end = self.length  # corpus-rate index one past the next decision's window

    def feed(self, chunk: np.ndarray) -> Decisions:
        if chunk.ndim != 2 or chunk.shape[1] != self.decoder.config.n_channels:
            raise ValueError(f"chunks must be (samples, {self.decoder.config.n_channels}) arrays, got {chunk.shape}")
        self.pending = np.concatenate([self.pending, self.front.process(chunk)])
        available = self.pending_start + self.pending.shape[0]
        ends = np.arange(self.next_end, available + 1, self.hop)
        windows = [self.pending[e - self.length - self.pending_start:e - self.pending_start] for e in ends]
        probabilities = self.decoder.probabilities(windows, self.source_fs) if windows else \
            np.zeros((0, len(self.decoder.config.class_ids)), dtype=np.float32)
        if ends.size:
            self.next_end = int(ends[-1]) + self.hop
            drop = self.next_end - self.length - self.pending_start
            self.pending, self.pending_start = self.pending[drop:], self.pending_start + drop
        return Decisions(ends / self.decoder.config.fs, probabilities)


def causal_decisions(decoder: Decoder, emg: np.ndarray, source_fs: float, chunk: int = 0) -> Decisions:
    """Decisions of a whole recording (raw source units) through the causal path, in chunks of `chunk`
    samples (0: one chunk)."""
    stream = StreamDecoder(decoder, source_fs)
    step = chunk or max(emg.shape[0], 1)
    parts = [stream.feed(emg[i:i + step]) for i in range(0, emg.shape[0], step)]
    return _joined(parts, decoder)


def zero_phase_decisions(decoder: Decoder, normalized: np.ndarray, source_fs: float, batch: int = 256) -> Decisions:
    """Decisions of a recording already filtered with zero phase and normalized with the decoder's statistics
    (`zero_phase_windows`), on the same window grid as the stream."""
    cfg = decoder.config
    length, hop = int(round(cfg.length_s * cfg.fs)), int(round(cfg.hop_s * cfg.fs))
    ends = np.arange(length, normalized.shape[0] + 1, hop)
    parts = [Decisions(ends[i:i + batch] / cfg.fs,
                       decoder.probabilities([normalized[e - length:e] for e in ends[i:i + batch]], source_fs))
             for i in range(0, ends.size, batch)]
    return _joined(parts, decoder)


def zero_phase_windows(decoder: Decoder, raw: RawRecording) -> np.ndarray:
    """A raw recording harmonized as the corpus was (zero-phase filters, resampling), then normalized with the
    person's calibration statistics instead of the recording's own."""
    cfg = decoder.config
    rec = harmonize(replace(raw, notch_hz=raw.notch_hz or tuple(cfg.notch_hz)), cfg.harmonize)
    return decoder.normalize(denormalize(rec.emg, rec.center, rec.scale))


def _joined(parts: list[Decisions], decoder: Decoder) -> Decisions:
    k = len(decoder.config.class_ids)
    if not parts:
        return Decisions(np.zeros(0), np.zeros((0, k), dtype=np.float32))
    return Decisions(np.concatenate([p.end_s for p in parts]),
                     np.concatenate([p.probabilities.reshape(-1, k) for p in parts]))
