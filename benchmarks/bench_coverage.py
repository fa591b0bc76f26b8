"""Event coverage of gesture vs rest time per dataset, and how long it takes to measure.

    python benchmarks/bench_coverage.py --corpus CORPUS.zarr --out benchmarks/out/coverage.json
    python benchmarks/bench_coverage.py --corpus CORPUS.zarr min_duration_ms=40   # another EventConfig

The corpus comes from `aemg prepare` (e.g. `aemg prepare --source ../shared/data --out real.zarr`).
For every dataset: the share of gesture-segment time and of rest-segment time covered by
contraction events (recording-level noise floor, detection per file piece, union over channels;
see aemg_dist/coverage.py) and their ratio. The issue's acceptance criterion is a ratio >= 3 on
at least four of the six shared datasets. Positional `key=value` arguments override EventConfig
fields, so a detector setting can be compared on the same corpus.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # single-core numbers, whatever the BLAS build

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aemg_dist.cli import format_table  # noqa: E402
from aemg_dist.config import load_config  # noqa: E402
from aemg_dist.coverage import coverage_table  # noqa: E402
from aemg_dist.events import EventConfig  # noqa: E402
from preprocessing.corpus import Corpus  # noqa: E402

MIN_RATIO = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="a prepared corpus (CORPUS.zarr)")
    parser.add_argument("--datasets", help="comma-separated dataset names (default: all)")
    parser.add_argument("--out", help="write the table and settings as JSON here")
    parser.add_argument("overrides", nargs="*", help="EventConfig fields as key=value")
    args = parser.parse_args()
    cfg = load_config(EventConfig, overrides=args.overrides)
    hours = sum(e.duration_s for e in Corpus(args.corpus).entries) / 3600

    start = time.perf_counter()
    rows = coverage_table(args.corpus, cfg, args.datasets.split(",") if args.datasets else None)
    seconds = time.perf_counter() - start

    print(format_table(rows))
    passing = [r["dataset"] for r in rows if r["ratio"] is not None and r["ratio"] >= MIN_RATIO]
    print(f"ratio >= {MIN_RATIO:g} on {len(passing)} of {len(rows)} datasets ({', '.join(passing)}); "
          f"{sum(r['recordings'] for r in rows)} recordings in {seconds:.1f} s, one thread "
          f"(corpus: {hours:.2f} h of EMG)")
    if args.out:
        result = {"rows": rows, "event_config": asdict(cfg), "seconds": round(seconds, 2),
                  "corpus_hours": round(hours, 3), "python": platform.python_version(),
                  "machine": platform.machine(), "cpus": os.cpu_count()}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))  # an uncovered rest gives ratio Infinity
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
