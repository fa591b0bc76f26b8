"""Prepare throughput: seconds of wall time per hour of EMG, single process vs Ray tasks.

    python benchmarks/bench_prepare.py --source ../shared/data --out benchmarks/out/prepare.json

Both runs prepare the same recordings into fresh corpora in one invocation, so the ratio
compares like with like on this machine. Ray is started (and warmed up) before its timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aemg_dist.parallel import ensure_ray  # noqa: E402
from preprocessing.harmonize import HarmonizeConfig  # noqa: E402
from preprocessing.prepare import prepare  # noqa: E402


def jobs_for(source: str, scale: str) -> list:
    if source == "synthetic":
        from preprocessing.synthetic import SyntheticConfig, synthetic_jobs

        return synthetic_jobs(SyntheticConfig(scale=scale))
    from preprocessing.manifest import manifest_jobs, resolve_source

    return [job for manifest, root in resolve_source(source) for job in manifest_jobs(manifest, root)]


def timed_prepare(jobs: list, workers: int, scratch: Path) -> dict:
    out = scratch / f"corpus-w{workers}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    report = prepare(jobs, out, HarmonizeConfig(), workers=workers, progress=False)
    wall = time.perf_counter() - start
    hours = report.emg_seconds_written / 3600
    return {"workers": workers, "wall_s": round(wall, 2), "emg_hours": round(hours, 3),
            "s_per_emg_hour": round(wall / hours, 2), "recordings": len(report.written), "failed": len(report.failed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=os.environ.get("AEMG_DATA", "../shared/data"))
    parser.add_argument("--scale", default="demo", help="synthetic scale when --source synthetic")
    parser.add_argument("--workers", type=int, default=2, help="Ray CPUs for the parallel run")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    jobs = jobs_for(args.source, args.scale)
    with tempfile.TemporaryDirectory() as scratch:
        single = timed_prepare(jobs, 1, Path(scratch))
        ensure_ray(num_cpus=args.workers)
        parallel = timed_prepare(jobs, args.workers, Path(scratch))
    result = {"source": args.source, "single": single, "ray": parallel,
              "speedup": round(single["wall_s"] / parallel["wall_s"], 2), "cpus": os.cpu_count()}
    print("| run | workers | recordings | EMG hours | wall s | s per EMG hour |\n|---|---|---|---|---|---|")
    for name in ("single", "ray"):
        r = result[name]
        print(f"| {name} | {r['workers']} | {r['recordings']} | {r['emg_hours']} | {r['wall_s']} | {r['s_per_emg_hour']} |")
    print(f"Ray / single-process speed-up: {result['speedup']}x")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
