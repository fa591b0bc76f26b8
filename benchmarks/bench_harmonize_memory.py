"""Peak memory and throughput of harmonization: whole-recording path vs the streaming path, at 1x and 4x length.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_harmonize_memory.py [--seconds 300 --channels 16 --fs 2048]

Each case runs in a fresh process that first makes the source array (a synthetic noise recording with a declared
50 Hz line and two file joins), so neither figure counts it:
- rss_MB: peak RSS above the RSS right after the source array exists (includes C buffers: sosfilt, blosc, zarr);
- tracemalloc_MB: peak of the allocations Python and numpy report, from a second run in the same process;
- Msamples/s: source channel-samples per second of the timed run (no tracemalloc).
Both paths write the recording into a fresh Zarr corpus (whole: harmonize then CorpusWriter.write; streaming:
CorpusWriter.write_raw, what `aemg prepare` does). The last column is the largest |z| difference of the two corpora.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import zarr

from preprocessing.harmonize import HarmonizeConfig

ROOT = Path(__file__).resolve().parent.parent


def _source(seconds: float, channels: int, fs: float):
    from preprocessing.geometry import ElectrodeLayout
    from preprocessing.recording import RawRecording

    n = int(seconds * fs)
    emg = np.random.default_rng(0).standard_normal((n, channels)) * 30.0 + 100.0
    emg += 5.0 * np.sin(2 * np.pi * 50.0 * np.arange(n) / fs)[:, None]
    return RawRecording(dataset="bench", subject="s1", session="day1", fs=fs, emg=emg, units="uV",
                        layout=ElectrodeLayout.from_dict({"layout": "ring"}, n_channels=channels),
                        joins=[n // 3, 2 * n // 3], notch_hz=(50.0,), source_files=["bench.bin"])


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def _run(path: str, raw, out: Path, chunk_seconds: float) -> None:
    from preprocessing.corpus import CorpusWriter
    from preprocessing.harmonize import HarmonizeConfig, harmonize

    writer = CorpusWriter(out, HarmonizeConfig(chunk_seconds=chunk_seconds))
    if path == "whole":
        writer.write(harmonize(raw, writer.config))
    else:
        writer.write_raw(raw)


def child(path: str, seconds: float, channels: int, fs: float, chunk_seconds: float, out: str) -> dict:
    """One case in this (fresh) process; prints a JSON line."""
    import preprocessing.corpus  # noqa: F401 - imports (zarr, scipy, storage) are not the harmonizer's memory or time
    import preprocessing.streaming  # noqa: F401

    raw = _source(seconds, channels, fs)
    base = _rss_bytes()
    start = time.perf_counter()
    _run(path, raw, Path(out) / "timed.zarr", chunk_seconds)
    wall = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    tracemalloc.start()
    _run(path, raw, Path(out) / "traced.zarr", chunk_seconds)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"rss_MB": peak_rss / 1e6, "tracemalloc_MB": traced / 1e6, "seconds": wall,
            "msamples_per_s": raw.n_samples * raw.n_channels / wall / 1e6, "source_MB": raw.emg.nbytes / 1e6}


def _max_difference(a: zarr.Array, b: zarr.Array) -> float:
    """Largest |a - b|, read a chunk at a time."""
    step = a.chunks[0]
    return max(float(np.abs(a[i:i + step] - b[i:i + step]).max()) for i in range(0, a.shape[0], step))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="recording length at 1x")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--fs", type=float, default=2048.0, help="source rate (resampled to 1000 Hz)")
    parser.add_argument("--chunk-seconds", type=float, default=HarmonizeConfig.chunk_seconds)
    parser.add_argument("--child", nargs=2, metavar=("PATH", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.seconds, args.channels, args.fs, args.chunk_seconds, args.child[1])))
        return
    print(f"source: {args.channels} channels at {args.fs:g} Hz, float64, declared 50 Hz notch, 2 joins; "
          f"chunk_seconds={args.chunk_seconds:g}")
    print(f"{'length':>8} {'path':>9} {'source_MB':>9} {'rss_MB':>8} {'tracemalloc_MB':>14} {'wall_s':>7} "
          f"{'Msamples/s':>10} {'max|dz|':>9}")
    for scale in (1, 4):
        seconds = args.seconds * scale
        corpora = {}
        with tempfile.TemporaryDirectory() as tmp:
            for path in ("whole", "streaming"):
                out = Path(tmp) / path
                out.mkdir()
                cmd = [sys.executable, __file__, "--seconds", str(seconds), "--channels", str(args.channels),
                       "--fs", str(args.fs), "--chunk-seconds", str(args.chunk_seconds), "--child", path, str(out)]
                result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                                   cwd=ROOT).stdout.strip().splitlines()[-1])
                corpora[path] = zarr.open_group(str(out / "timed.zarr"), mode="r")["bench/s1/day1"]["emg"]
                diff = f"{_max_difference(corpora['whole'], corpora[path]):.1e}" if path == "streaming" else ""
                print(f"{seconds:>7.0f}s {path:>9} {result['source_MB']:>9.0f} {result['rss_MB']:>8.1f} "
                      f"{result['tracemalloc_MB']:>14.1f} {result['seconds']:>7.1f} {result['msamples_per_s']:>10.2f} "
                      f"{diff:>9}", flush=True)


if __name__ == "__main__":
    main()
