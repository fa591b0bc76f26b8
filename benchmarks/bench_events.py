"""Event detection and tokenization: onset F1 vs SNR, and single-process throughput.

    python benchmarks/bench_events.py --out benchmarks/out/events.json
    python benchmarks/bench_events.py --throughput-only   # (b) alone

(a) Onset F1 within +-25 ms on synthetic bursts with known onsets (the generator of
    tests/test_events.py: band-limited noise bursts with ramps on white or pink background
    noise in the same band, 8 channels, 120 s per seed) for each SNR and envelope kind with
    default thresholds, for a 1 kHz device (20-450 Hz) and a 200 Hz one (20-95 Hz content).
(b) Channel-samples per second of `detect_events` alone and of `tokenize_window` (detection
    + features) on one 10-minute 8-channel 1 kHz recording in one call, and cut into 2-second
    windows with a recording-level noise floor (what a tokenizing worker does): one
    `tokenize_window` call per window, and all windows in one `tokenize_windows` call (same
    tokens, per-call overhead shared; with the default window-summary group and without it); median of
    `--repeats` runs, one thread.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # single-core numbers, whatever the BLAS build

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from aemg_dist.events import ENVELOPE_KINDS, EventConfig, detect_events, envelope, noise_floor, onset_f1  # noqa: E402
from aemg_dist.tokens import TokenConfig, tokenize_window, tokenize_windows  # noqa: E402
from test_events import burst_recording  # noqa: E402

FS = 1000.0
TOLERANCE_S = 0.025
SNRS_DB = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0)
NOISES = ("white", "pink")
BANDS = {"1 kHz device": (20.0, 450.0), "200 Hz device": (20.0, 95.0)}


def onset_accuracy(seeds: int) -> list[dict]:
    """One row per (SNR, device, noise, envelope kind): precision, recall, F1, median onset error; seeds pooled."""
    rows = []
    for snr, (device, band), noise in itertools.product(SNRS_DB, BANDS.items(), NOISES):
        recordings = [burst_recording(snr, seconds=120.0, n_channels=8, noise=noise, band=band, seed=seed)
                      for seed in range(seeds)]
        # Pool the seeds on one time axis, recordings far apart, so one matching covers them all.
        shifts = np.arange(seeds) * 2 * recordings[0][0].shape[0]
        reference = np.concatenate([onsets + shift for (_, onsets), shift in zip(recordings, shifts)])
        for kind in ENVELOPE_KINDS:
            cfg = EventConfig(envelope=kind)
            found = []
            for (x, _), shift in zip(recordings, shifts):
                events = detect_events(x, FS, cfg)
                found.append(events.onset[events.chunk == 0] + shift)
            found = np.concatenate(found)
            precision, recall, f1 = onset_f1(reference, found, TOLERANCE_S * FS)
            rows.append({"snr_db": snr, "device": device, "noise": noise, "envelope": kind,
                         "precision": round(precision, 3), "recall": round(recall, 3), "f1": round(f1, 3),
                         "median_onset_error_ms": median_onset_error_ms(reference, found)})
    return rows


def median_onset_error_ms(reference: np.ndarray, found: np.ndarray) -> float | None:
    """Median signed error (detected - true) of the nearest detection of each onset, within the tolerance."""
    if not found.size:
        return None
    error = found[np.abs(found[None, :] - reference[:, None]).argmin(axis=1)] - reference
    error = error[np.abs(error) <= TOLERANCE_S * FS]
    return round(float(np.median(error)) / FS * 1e3, 1) if error.size else None


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def throughput(repeats: int, window_s: float = 2.0) -> dict:
    """Channel-samples per second of detection and tokenization on a 10-minute 8-channel recording."""
    x, _ = burst_recording(20.0, seconds=600.0, n_channels=8, seed=0)
    positions = np.zeros((x.shape[1], 3), dtype=np.float32)
    cfg, tok_cfg = EventConfig(), TokenConfig()
    window = int(window_s * FS)

    starts = range(0, x.shape[0] - window + 1, window)

    def windowed() -> None:
        floor = noise_floor(envelope(x, FS, cfg)[0], cfg)  # once per recording, shared by its windows
        for start in starts:
            tokenize_window(x[start:start + window], FS, positions, FS, ev_cfg=cfg, tok_cfg=tok_cfg, floor=floor)

    def batched(tokens: TokenConfig = tok_cfg) -> None:
        floor = noise_floor(envelope(x, FS, cfg)[0], cfg)
        tokenize_windows([x[start:start + window] for start in starts], FS, positions, FS, ev_cfg=cfg,
                         tok_cfg=tokens, floor=floor)

    runs = {
        "detect_events, one call": lambda: detect_events(x, FS, cfg),
        "tokenize_window, one call": lambda: tokenize_window(x, FS, positions, FS),
        f"tokenize_window, {window_s:g} s windows": windowed,
        f"tokenize_windows, {window_s:g} s windows": batched,
        # the default adds the window-summary group (one token per channel over each window): its cost, side by side
        f"tokenize_windows, {window_s:g} s windows, event tokens only":
            lambda: batched(TokenConfig(window_summary=False)),
    }
    results = {}
    for name, fn in runs.items():
        fn()  # warm-up: imports, caches, FFT plans
        seconds = median_time(fn, repeats)
        results[name] = {"seconds": round(seconds, 4), "channel_samples_per_s": round(x.size / seconds)}
    events = detect_events(x, FS, cfg)
    tokens = tokenize_window(x, FS, positions, FS)
    results["recording"] = {"seconds": x.shape[0] / FS, "channels": x.shape[1], "events": events.n_events,
                            "tokens": tokens.n_tokens}
    return results


def markdown(f1_rows: list[dict] | None, speed: dict) -> str:
    lines = f1_markdown(f1_rows) + [""] if f1_rows is not None else []
    rec = speed["recording"]
    lines += [f"Throughput, one thread, {rec['seconds'] / 60:g} min x {rec['channels']} channels at "
              f"{FS:g} Hz ({rec['events']} events, {rec['tokens']} tokens):", "",
              "| run | median s | M channel-samples/s |", "|---|---|---|"]
    for name, row in speed.items():
        if name != "recording":
            lines.append(f"| {name} | {row['seconds']:.3f} | {row['channel_samples_per_s'] / 1e6:.1f} |")
    return "\n".join(lines)


def f1_markdown(f1_rows: list[dict]) -> list[str]:
    cell = {(r["snr_db"], r["device"], r["envelope"], r["noise"]): r for r in f1_rows}
    columns = list(itertools.product(ENVELOPE_KINDS, BANDS))
    headers = [f"{kind}, {device}" for kind, device in columns] + [f"rms onset error, {device}" for device in BANDS]
    lines = ["Onset F1 within +-25 ms, white / pink background noise; median onset error in ms:", "",
             "| SNR (dB) | " + " | ".join(headers) + " |", "|---" * (1 + len(headers)) + "|"]
    for snr in SNRS_DB:
        f1s = [" / ".join(f"{cell[snr, device, kind, noise]['f1']:.2f}" for noise in NOISES)
               for kind, device in columns]
        errors = [" / ".join(str(cell[snr, device, "rms", noise]["median_onset_error_ms"]) for noise in NOISES)
                  for device in BANDS]
        lines.append(f"| {snr:g} | " + " | ".join(f1s + errors) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="synthetic recordings per (SNR, noise)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per throughput measurement")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--throughput-only", action="store_true", help="skip the onset F1 part (a)")
    args = parser.parse_args()
    f1_rows = None if args.throughput_only else onset_accuracy(args.seeds)
    speed = throughput(args.repeats)
    print(markdown(f1_rows, speed))
    if args.out:
        result = {"onset_f1": f1_rows, "throughput": speed, "event_config": asdict(EventConfig()),
                  "tolerance_s": TOLERANCE_S, "python": platform.python_version(), "numpy": np.__version__,
                  "machine": platform.machine(), "cpus": os.cpu_count()}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
