"""Streaming harmonization: the steps of `harmonize.harmonize`, one time chunk at a time.

The whole-recording path holds the recording as float64 several times over (repair, DC removal, each
filter, the resampler), so a one-hour 64-channel 2 kHz recording needs several times its 3.7 GB. Here every
float64 working array is bounded by `HarmonizeConfig.chunk_seconds` plus the filters' margins; only the
source array (as the reader returns it) and the output array (numpy, or the corpus's zarr array on disk)
have the recording's length. Each step is kept equal to the whole path, not re-designed:

- repair of non-finite samples: the same linear interpolation, with the nearest finite neighbours found
  in the source beyond the chunk (bitwise the same values);
- quality flags and the mains spectrum: sums, extremes, counts and Welch's average of periodograms are
  exact over chunks (Welch chunks start on its segment grid);
- DC removal: the whole path subtracts each piece's median; the band-pass annihilates any constant up to
  rounding, so the median of a deterministic subsample does the same job (it equals the median exactly on
  constant or coarsely quantized channels, where it matters that the difference is exactly zero);
- zero-phase filtering (sosfiltfilt) cannot be streamed exactly: its backward pass starts at the end of
  the piece. The forward pass is streamed exactly (state carried, the same odd extension at the piece's
  start and end); the backward pass over a chunk starts `margin` samples later, past the chunk, where a
  steady-state start differs from the true one by a transient that decays below `TRANSIENT_DECAY` of its
  size before it reaches the chunk. The last chunk of a piece is exact. Measured: z-scores within 1e-6 of
  the whole path (tests/test_harmonize.py);
- polyphase resampling is an FIR: each output block is computed from the input slice that feeds it,
  sliced at a multiple of `down` so the polyphase phase (and so every output index) lines up;
- robust statistics: exact median and MAD over the float32 output by radix selection on the float32
  bits (three counting passes each), i.e. the whole path's statistics of the float32-rounded signal.

The filtered signal is written to the output as float32 as it is ready, then normalized in place once the
statistics are known; a corpus writer keeps the group marked incomplete until then (corpus.py).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Callable, Iterator

import numpy as np
from scipy import signal

from .errors import DataError
from .harmonize import (
    HarmonizeConfig, HarmonizedRecording, MAD_TO_STD, _check_input, _finish_quality, _flag_powerline,
    _flag_raw_spread, _notch_lines, _repair_flags, _scaled, harmonized_length, resample_ratio, scaled_segments,
    valid_band,
)
from .recording import RawRecording

TRANSIENT_DECAY = 1e-10  # how far the backward filter's start transient decays before it reaches a chunk
DC_SUBSAMPLE = 16_384  # samples per piece for the DC estimate
WELCH_SEGMENTS = 8  # Welch segments per chunk of the spectrum pass
_SCAN_ROWS = 65_536  # rows read at a time when looking for the next finite sample


class _Source:
    """Rows of the source recording as float64, non-finite samples repaired as the whole path repairs them."""

    def __init__(self, raw: RawRecording, config: HarmonizeConfig, rows: int, where: str):
        self.emg = raw.emg
        self.n, self.channels = raw.n_samples, raw.n_channels
        self.rows = rows
        n_bad = np.zeros(self.channels, dtype=np.int64)
        if not np.issubdtype(self.emg.dtype, np.integer):
            for start in range(0, self.n, rows):
                n_bad += (~np.isfinite(self.emg[start:start + rows])).sum(axis=0)
        if n_bad.sum() == self.n * self.channels:
            raise DataError(where, "every sample is NaN or Inf")
        self.quality, self.dead = _repair_flags(n_bad / self.n, config)
        self.any_bad = bool(n_bad.any())

    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        stop = self.n if stop is None else stop
        for a in range(start, stop, self.rows):
            yield a, self.read(a, min(a + self.rows, stop))

    def read(self, start: int, stop: int) -> np.ndarray:
        x = np.array(self.emg[start:stop], dtype=np.float64)
        if not self.any_bad:
            return x
        bad = ~np.isfinite(x)
        x[:, self.dead] = 0.0
        for ch in np.flatnonzero(bad.any(axis=0) & ~self.dead):
            ok = np.flatnonzero(~bad[:, ch])
            t_ok, x_ok = start + ok, x[ok, ch]
            before, after = self._finite_before(start, ch), self._finite_after(stop, ch)
            if before is not None:
                t_ok, x_ok = np.concatenate([[before], t_ok]), np.concatenate([[self.emg[before, ch]], x_ok])
            if after is not None:
                t_ok, x_ok = np.concatenate([t_ok, [after]]), np.concatenate([x_ok, [self.emg[after, ch]]])
            x[bad[:, ch], ch] = np.interp(start + np.flatnonzero(bad[:, ch]), t_ok, x_ok.astype(np.float64))
        return x

    def _finite_before(self, index: int, ch: int) -> int | None:
        for hi in range(index, 0, -_SCAN_ROWS):
            lo = max(0, hi - _SCAN_ROWS)
            found = np.flatnonzero(np.isfinite(self.emg[lo:hi, ch]))
            if len(found):
                return lo + int(found[-1])
        return None

    def _finite_after(self, index: int, ch: int) -> int | None:
        for lo in range(index, self.n, _SCAN_ROWS):
            found = np.flatnonzero(np.isfinite(self.emg[lo:lo + _SCAN_ROWS, ch]))
            if len(found):
                return lo + int(found[0])
        return None


def _raw_quality(source: _Source, raw: RawRecording, config: HarmonizeConfig) -> np.ndarray:
    """Flags flat and clipped channels (as harmonize._flag_raw_quality) in two passes; returns the channel means."""
    count, mean, m2 = 0, np.zeros(source.channels), np.zeros(source.channels)
    low, high = np.full(source.channels, np.inf), np.full(source.channels, -np.inf)
    for _, x in source.blocks():  # Chan et al.'s merge of block means and squared deviations
        n_b, mean_b = x.shape[0], x.mean(axis=0)
        delta = mean_b - mean
        m2 += ((x - mean_b) ** 2).sum(axis=0) + delta ** 2 * count * n_b / (count + n_b)
        mean = mean + delta * n_b / (count + n_b)
        count += n_b
        low, high = np.minimum(low, x.min(axis=0)), np.maximum(high, x.max(axis=0))
    std = np.sqrt(m2 / count)
    rails = raw.adc_range if raw.adc_range is not None else (low, high)
    at_rail = np.zeros(source.channels)
    for _, x in source.blocks():
        at_rail += ((x <= rails[0]) | (x >= rails[1])).sum(axis=0)
    # flat needs MAD <= tol and std <= tol; MAD <= 2 std always, so only std in (tol/2, tol] needs the MAD itself
    spread = np.where(std <= config.flat_tolerance / 2, 0.0, np.inf)
    for ch in np.flatnonzero((std <= config.flat_tolerance) & (std > config.flat_tolerance / 2)):
        column = np.concatenate([x[:, ch] for _, x in source.blocks()])  # a near-constant channel: rare
        spread[ch] = np.median(np.abs(column - np.median(column)))
    _flag_raw_spread(spread, std, at_rail / source.n, config, source.quality)
    return mean


def _welch(source: _Source, mean: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """harmonize._power_spectrum over chunks: Welch's mean of periodograms, each chunk a whole number of segments."""
    nperseg = int(min(source.n, 2 ** int(np.ceil(np.log2(2 * fs)))))
    step = nperseg - nperseg // 2
    n_seg = (source.n - nperseg // 2) // step
    # a few segments at a time: welch holds every segment of its input (and their spectra) at once
    per_block = max(1, min(source.rows // step, WELCH_SEGMENTS))
    total, freqs = 0.0, None
    for k in range(0, n_seg, per_block):
        k1 = min(k + per_block, n_seg)
        x = source.read(k * step, (k1 - 1) * step + nperseg) - mean
        freqs, psd = signal.welch(x, fs=fs, nperseg=nperseg, axis=0)
        total = total + psd * (k1 - k)
    return freqs, total / n_seg


def _filtfilt_stream(blocks: Iterator[np.ndarray], sos: np.ndarray, padlen: int,
                     emit_rows: int) -> Iterator[np.ndarray]:
    """signal.sosfiltfilt(sos, piece, axis=0, padlen=padlen) of the piece whose rows `blocks` yields, in blocks.

    Forward: the same odd extension and steady-state start, state carried across blocks (exact). Backward:
    run from `margin` rows past each emitted block with a steady-state start; exact on the piece's last block.
    """
    zi = signal.sosfilt_zi(sos)[:, :, None]
    radius = float(np.max(np.abs(signal.sos2zpk(sos)[1])))
    margin = int(math.ceil(math.log(TRANSIENT_DECAY) / math.log(radius))) if radius > 0 else 0
    state = None
    y_rows: list[np.ndarray] = []  # forward output not emitted yet
    buffered = 0
    tail = np.zeros((0, 0))  # the last padlen + 1 input rows, for the right extension
    for x in _first_at_least(blocks, padlen + 1):
        if state is None:
            ext = 2 * x[:1] - x[padlen:0:-1]
            _, state = signal.sosfilt(sos, ext, axis=0, zi=zi * ext[:1])
        y, state = signal.sosfilt(sos, x, axis=0, zi=state)
        y_rows.append(y)
        buffered += y.shape[0]
        tail = x[-(padlen + 1):] if x.shape[0] > padlen else np.concatenate([tail, x])[-(padlen + 1):]
        if buffered >= margin + emit_rows:
            forward = np.concatenate(y_rows)
            back, _ = signal.sosfilt(sos, forward[::-1], axis=0, zi=zi * forward[-1:])
            y_rows, buffered = [forward[forward.shape[0] - margin:].copy()], margin  # a copy frees `forward`
            del forward
            yield back[::-1][:back.shape[0] - margin]
            del back
    ext = 2 * tail[-1:] - tail[-2:-(padlen + 2):-1]
    y_pad, _ = signal.sosfilt(sos, ext, axis=0, zi=state)
    forward = np.concatenate([*y_rows, y_pad])
    back, _ = signal.sosfilt(sos, forward[::-1], axis=0, zi=zi * forward[-1:])
    yield back[::-1][:forward.shape[0] - padlen]


def _first_at_least(blocks: Iterator[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    """The same rows, the first block holding at least `rows` of them (the odd extension needs them)."""
    pending: list[np.ndarray] = []
    for x in blocks:
        pending.append(x)
        if sum(p.shape[0] for p in pending) >= rows:
            break
    yield np.concatenate(pending)
    yield from blocks


def _polyphase_filter(up: int, down: int) -> tuple[np.ndarray, int]:
    """The FIR and output offset signal.resample_poly uses (default Kaiser window), without its trailing zeros."""
    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = signal.firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up
    n_pre_pad = down - half_len % down
    return np.concatenate([np.zeros(n_pre_pad), h]), (half_len + n_pre_pad) // down


def _resample_stream(blocks: Iterator[np.ndarray], ratio: Fraction, n_in: int, n_keep: int,
                     emit_rows: int) -> Iterator[np.ndarray]:
    """signal.resample_poly(piece, up, down, axis=0) trimmed or edge-padded to n_keep rows, in blocks.

    Output j is y[j + offset] of the full polyphase convolution y = upfirdn(h, x, up, down); it needs inputs
    t with t * up in [m * down - len(h) + 1, m * down]. An input slice starting at a multiple of `down` keeps
    the polyphase phase, so upfirdn over the slice gives y[m] at m - a * up / down, bitwise.
    """
    up, down = ratio.numerator, ratio.denominator
    h, offset = _polyphase_filter(up, down)
    n_out = -(-n_in * up // down)
    n_emit = min(n_out, n_keep)
    buf: list[np.ndarray] = []
    buf_start, buf_rows, j = 0, 0, 0
    last = None
    consumed = 0

    def first_input(m: int) -> int:
        return max(0, -(-(m * down - len(h) + 1) // up)) // down * down

    def emit(j0: int, j1: int) -> np.ndarray:
        a = first_input(j0 + offset)
        x = np.concatenate(buf)[a - buf_start:]
        y = signal.upfirdn(h, x, up, down, axis=0)
        lo, hi = j0 + offset - a * up // down, j1 + offset - a * up // down
        if y.shape[0] < hi:  # past the convolution's end only h's zero padding contributes
            y = np.concatenate([y, np.zeros((hi - y.shape[0], y.shape[1]))])
        return y[lo:hi]

    for x in blocks:
        buf.append(x)
        buf_rows += x.shape[0]
        consumed += x.shape[0]
        ready = n_emit if consumed >= n_in else min(n_emit, (consumed * up - 1) // down - offset + 1)
        if ready - j >= emit_rows or (consumed >= n_in and ready > j):
            out = emit(j, ready)
            j = ready
            last = out[-1:].copy()
            yield out
            del out
            keep_from = first_input(j + offset)
            whole = np.concatenate(buf)
            buf, buf_start = [whole[keep_from - buf_start:].copy()], keep_from  # a copy frees `whole`
            del whole
    if n_keep > n_emit and last is not None:
        yield np.repeat(last, n_keep - n_emit, axis=0)


class _RankSelect:
    """Exact order statistics per channel of float32 values streamed in passes: radix selection on their bits.

    Each pass counts the next digit of the values whose higher bits match the ones found so far, so memory
    is a (channels, ranks, 4096) histogram whatever the length. Float32 bits map to unsigned keys that sort
    like the values.
    """

    SHIFTS = ((20, 12), (8, 12), (0, 8))

    def __init__(self, ranks: np.ndarray):
        self.ranks = ranks.astype(np.int64).copy()  # (channels, r): rank still to find inside the prefix
        self.prefix = np.zeros(self.ranks.shape, dtype=np.uint32)  # the key's bits found so far
        self.step = 0
        self._reset()

    def _reset(self) -> None:
        self.hist = np.zeros(self.ranks.shape + (1 << self.SHIFTS[self.step][1],), dtype=np.int64)

    @property
    def done(self) -> bool:
        return self.step == len(self.SHIFTS)

    def add(self, values: np.ndarray, use: np.ndarray) -> None:
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        keys = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000))
        shift, width = self.SHIFTS[self.step]
        digit = (keys >> shift) & np.uint32((1 << width) - 1)
        channels = np.broadcast_to(np.arange(values.shape[1]), values.shape)
        for r in range(self.ranks.shape[1]):
            if self._shares_first(r):  # counted with rank 0 (end_pass copies it)
                continue
            # step 0 matches every key (a shift by the key's width is not defined)
            match = use if self.step == 0 else use & (keys >> (shift + width) == self.prefix[:, r])
            cells = channels[match] * (1 << width) + digit[match]
            self.hist[:, r] += np.bincount(cells, minlength=values.shape[1] << width).reshape(values.shape[1], -1)

    def _shares_first(self, r: int) -> bool:
        """Rank r's prefix is rank 0's on every channel, so its counts are too (the two middle ranks mostly are)."""
        return r > 0 and np.array_equal(self.prefix[:, r], self.prefix[:, 0])

    def end_pass(self) -> None:
        """Fix the next digit of every rank: the first whose cumulative count passes the rank."""
        for r in range(1, self.ranks.shape[1]):
            if self._shares_first(r):
                self.hist[:, r] = self.hist[:, 0]
        width = self.SHIFTS[self.step][1]
        below = np.cumsum(self.hist, axis=-1)
        digit = np.argmax(below > self.ranks[..., None], axis=-1)
        self.ranks -= np.take_along_axis(below - self.hist, digit[..., None], axis=-1)[..., 0]
        self.prefix = (self.prefix << np.uint32(width)) | digit.astype(np.uint32)
        self.step += 1
        if not self.done:
            self._reset()

    def values(self) -> np.ndarray:
        """The selected values (channels, ranks) as float64; call when done."""
        keys = self.prefix
        bits = np.where(keys >> 31 == 1, keys & np.uint32(0x7FFFFFFF), ~keys).astype(np.uint32)
        return bits.view(np.float32).astype(np.float64)


def _median_ranks(n_use: np.ndarray) -> np.ndarray:
    """The two middle ranks np.median averages (the same one twice for an odd count)."""
    return np.stack([(n_use - 1) // 2, n_use // 2], axis=1)


def _select(ranks: np.ndarray, passes: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
            first: _RankSelect | None = None) -> np.ndarray:
    """Run the remaining passes of a selection; the mean of the two middle values per channel (float64)."""
    select = first or _RankSelect(ranks)
    while not select.done:
        for values, use in passes():
            select.add(values, use)
        select.end_pass()
    return select.values().mean(axis=1)


def harmonize_chunked(raw: RawRecording, config: HarmonizeConfig | None = None,
                      allocate: Callable[[int, int], Any] | None = None) -> HarmonizedRecording:
    """harmonize.harmonize in time chunks of config.chunk_seconds; the same result within float32 tolerance.

    allocate(n_samples, n_channels) makes the array that receives the float32 samples as they are ready (the
    corpus writer gives its zarr array); called once the input passed its checks; a numpy array when None.
    The array holds the filtered signal until the statistics are known and the z-scores after; whoever
    allocated it marks it complete after this returns.
    """
    config = config or HarmonizeConfig()
    where = raw.source_files[0] if len(raw.source_files) == 1 else raw.key
    _check_input(raw, where)
    band = valid_band(raw.fs, config)
    ratio = resample_ratio(raw.fs, config.target_fs)
    n_out = harmonized_length(raw.n_samples, raw.fs, config)
    source = _Source(raw, config, max(1, int(round(config.chunk_seconds * raw.fs))), where)
    quality = source.quality
    mean = _raw_quality(source, raw, config)
    freqs, psd = _welch(source, mean, raw.fs)
    notch_hz = _notch_lines(raw, band, freqs, psd, config)
    _flag_powerline(freqs, psd, band, config, quality)

    out = (allocate or _numpy_array)(n_out, raw.n_channels)
    out_rows = _write_rows(out, config)
    sections = [signal.butter(config.filter_order, band, btype="bandpass", fs=raw.fs, output="sos")]
    sections += [signal.tf2sos(*signal.iirnotch(f0, config.notch_q, fs=raw.fs)) for f0 in notch_hz]
    n_use = _kept_counts(source, ratio, n_out) if source.any_bad else np.full(raw.n_channels, n_out)
    use_all = n_use == 0
    n_use[use_all] = n_out
    center_select = _RankSelect(_median_ranks(n_use))
    pending = _Pending(out, out_rows)
    for start, stop in raw.pieces():
        for block in _piece_stream(source, sections, start, stop, ratio, config):
            for row0, done in pending.add(block):
                center_select.add(done, _kept(source, ratio, row0, done.shape[0], use_all))
    for row0, done in pending.flush():
        center_select.add(done, _kept(source, ratio, row0, done.shape[0], use_all))
    center_select.end_pass()

    def stored(transform: Callable[[np.ndarray], np.ndarray]) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]:
        def passes() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for row0 in range(0, n_out, out_rows):
                values = np.asarray(out[row0:row0 + out_rows])
                yield transform(values), _kept(source, ratio, row0, values.shape[0], use_all)
        return passes

    ranks = _median_ranks(n_use)
    center = _select(ranks, stored(lambda v: v), center_select)
    mad = _select(ranks, stored(lambda v: np.abs(v.astype(np.float64) - center).astype(np.float32)))
    scale = _finish_quality(quality, MAD_TO_STD * mad, where)
    for row0 in range(0, n_out, out_rows):  # normalize in place
        values = np.asarray(out[row0:row0 + out_rows], dtype=np.float64)
        out[row0:row0 + values.shape[0]] = ((values - center) / scale).astype(np.float32)
    return HarmonizedRecording(
        raw=raw, emg=out, fs=float(config.target_fs), valid_band_hz=band, center=center, scale=scale,
        quality=quality, notch_hz=notch_hz, segments=scaled_segments(raw, ratio),
        joins=[_scaled(a, ratio) for a, _ in raw.pieces()[1:]],
    )


def _piece_stream(source: _Source, sections: list[np.ndarray], start: int, stop: int, ratio: Fraction,
                  config: HarmonizeConfig) -> Iterator[np.ndarray]:
    """One piece through DC removal, band-pass, notches and resampling, in blocks."""
    n = stop - start
    stride = max(1, -(-n // DC_SUBSAMPLE))
    # copies: a view would keep its whole block alive
    dc = np.median(np.concatenate([x[(start - a) % stride::stride].copy() for a, x in source.blocks(start, stop)]),
                   axis=0)
    stream: Iterator[np.ndarray] = (x - dc for _, x in source.blocks(start, stop))
    for i, sos in enumerate(sections):
        # the whole path: sosfiltfilt's default padlen for the band-pass, 3 * max(len(a), len(b)) for a notch
        padlen = min(3 * (2 * len(sos) + 1) if i == 0 else 9, n - 1)
        stream = _filtfilt_stream(stream, sos, padlen, source.rows)
    if ratio != 1:
        emit = max(1, int(round(config.chunk_seconds * config.target_fs)))
        stream = _resample_stream(stream, ratio, n, _scaled(stop, ratio) - _scaled(start, ratio), emit)
    return stream


def _numpy_array(n_samples: int, n_channels: int) -> np.ndarray:
    return np.empty((n_samples, n_channels), dtype=np.float32)


class _Pending:
    """Collects output rows and writes them in blocks of the output's chunk rows (whole zarr chunks)."""

    def __init__(self, out: Any, rows: int):
        self.out, self.rows = out, rows
        self.blocks: list[np.ndarray] = []
        self.n, self.written = 0, 0

    def add(self, block: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        self.blocks.append(block.astype(np.float32))
        self.n += block.shape[0]
        if self.n >= self.rows:
            whole = np.concatenate(self.blocks)
            cut = (whole.shape[0] // self.rows) * self.rows
            self.blocks, self.n = [whole[cut:]], whole.shape[0] - cut
            yield self._write(whole[:cut])

    def flush(self) -> Iterator[tuple[int, np.ndarray]]:
        if self.n:
            yield self._write(np.concatenate(self.blocks))
            self.blocks, self.n = [], 0

    def _write(self, block: np.ndarray) -> tuple[int, np.ndarray]:
        row0 = self.written
        self.out[row0:row0 + block.shape[0]] = block
        self.written += block.shape[0]
        return row0, block


def _write_rows(out: Any, config: HarmonizeConfig) -> int:
    """Rows per write: the output's chunk rows (a zarr array) or chunk_seconds at the target rate."""
    chunks = getattr(out, "chunks", None)
    if chunks:
        return int(chunks[0])
    return max(1, int(round(config.chunk_seconds * config.target_fs)))


def _source_rows(ratio: Fraction, row0: int, rows: int, n_source: int) -> np.ndarray:
    """harmonize._at_rate's map: output sample -> the source sample at or just before it."""
    return np.minimum(np.arange(row0, row0 + rows) * ratio.denominator // ratio.numerator, n_source - 1)


def _kept(source: _Source, ratio: Fraction, row0: int, rows: int, use_all: np.ndarray) -> np.ndarray:
    """Output samples the statistics use: not repaired, or all of a channel with none unrepaired."""
    if not source.any_bad:
        return np.ones((rows, source.channels), dtype=bool)
    return np.isfinite(source.emg[_source_rows(ratio, row0, rows, source.n)]) | use_all


def _kept_counts(source: _Source, ratio: Fraction, n_out: int) -> np.ndarray:
    """Per channel, how many output samples map to a recorded (not repaired) source sample."""
    counts = np.zeros(source.channels, dtype=np.int64)
    for row0 in range(0, n_out, source.rows):
        rows = min(source.rows, n_out - row0)
        counts += _kept(source, ratio, row0, rows, np.zeros(source.channels, dtype=bool)).sum(axis=0)
    return counts
