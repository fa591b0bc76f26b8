"""Distributed overhead of pretraining: Ray Train + DeepSpeed (2 CPU workers) vs the plain loop.

    python benchmarks/bench_pretrain.py --tokens runs/demo/tokens --out benchmarks/out/pretrain.json
    python benchmarks/bench_pretrain.py --tokens runs/demo/tokens --set data.read_ahead_mb=64   # any setting, every run

Same model preset, same global batch, same number of steps. Time per step is taken from the
runs' own metrics.csv between step `--warm` and the last step, so start-up (Ray, DeepSpeed,
process groups, the k-means initialisation) is excluded: this is the steady-state overhead.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aemg_dist.train import load_pretrain_config, pretrain  # noqa: E402


def seconds_per_step(metrics: Path, warm: int) -> float:
    with metrics.open() as f:
        rows = [(float(r["step"]), float(r["elapsed_s"])) for r in csv.DictReader(f)]
    (s0, t0), (s1, t1) = next(r for r in rows if r[0] >= warm), rows[-1]
    return (t1 - t0) / (s1 - s0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", required=True, help="token shards (aemg tokenize)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--zero-stages", default="0,2,3")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a pretraining setting for every run (repeatable), as on `aemg pretrain`'s command line")
    args = parser.parse_args()
    common = [f"preset={args.preset}", f"data.tokens={args.tokens}", f"data.batch_size={args.batch_size}",
              f"optim.max_steps={args.steps}", "run.log_every=10", f"run.checkpoint_every={args.steps}",
              f"run.val_every={args.steps}", "data.val_fraction=0", *args.set]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"plain": ["dist.ray=false"], **{f"ray_zero{z}": [f"dist.zero_stage={z}"]
                                                for z in args.zero_stages.split(",")}}
        for name, extra in runs.items():
            out = Path(tmp) / name
            pretrain(load_pretrain_config(None, [*common, f"run.out={out}", *extra]))
            results[name] = round(seconds_per_step(out / "metrics.csv", args.warm), 4)
    plain = results["plain"]
    print(f"| run | s/step (global batch {args.batch_size}) | samples/s | time per sample vs plain |\n|---|---|---|---|")
    for name, sps in results.items():
        print(f"| {name} | {sps} | {args.batch_size / sps:.1f} | {sps / plain:.2f}x |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"seconds_per_step": results, "batch_size": args.batch_size,
                                              "preset": args.preset, "steps": args.steps, "settings": args.set},
                                             indent=1))


if __name__ == "__main__":
    main()
