"""Memory and time of prepare -> tokenize -> pretrain on the large synthetic corpus and on a 4x larger one.

    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py --fraction 0.05 --out benchmarks/out/scale
    python benchmarks/bench_scale.py --fraction 0.25 --work runs/scale   # a quarter of the large scale and all of it
    python benchmarks/bench_scale.py --fraction 0.25 --work runs/scale --stages pretrain   # again, pretraining only
    python benchmarks/bench_scale.py --fraction 1.0   # the large scale (105 h) and 4x it: ~135 GB, hours on 2 cores

Sizes: `--fraction F` of the large scale's subjects (`aemg prepare --source synthetic --scale large
--subjects N`, same protocol: four simulated devices, two 737 s sessions per subject), and `--factor` times
as many subjects. Each stage runs as its own `aemg` process (with its own local Ray on `--workers` CPUs),
so each stage's peak is its own:
- prepare: generate and harmonize the corpus;
- tokenize: the corpus into token shards (Ray Data);
- pretrain: `--steps` steps of the tiny preset on Ray Train + DeepSpeed, 2 CPU workers streaming the shards.
Per stage and size: wall time and peak RSS (sampled every 0.1 s, process_memory.py) of the driver, of the
largest Ray worker, of Ray's daemons and of the whole tree, and the largest worker of each kind (a process
title such as `ray::ReadParquet`: the largest worker can be a training worker at one size and hide a reader that
doubled), by RSS and by private memory (RSS less shared pages: a Ray Data reader's RSS includes the object store's
blocks it wrote). OUT gets scale.json, scale.md (the tables, including the ratio of the larger size to the smaller per
stage; target <= 1.2) and each stage's log. `--stages pretrain --work W` measures again the stages named, on the
corpora and tokens an earlier run left in W.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from preprocessing.synthetic import SyntheticConfig, default_datasets, synthetic_jobs  # noqa: E402
from process_memory import TreePeaks, run_sampled  # noqa: E402 - benchmarks/, this script's folder

STAGES = ("prepare", "tokenize", "pretrain")
STAGE_OUTPUT = {"prepare": "corpus.zarr", "tokenize": "tokens", "pretrain": "pretrain"}  # in a size's work folder
TARGET_RATIO = 1.2


def stage_commands(scale: str, subjects: int, work: Path, steps: int, workers: int,
                   batch_size: int) -> dict[str, list[str]]:
    """The three `aemg` commands of one size, in order."""
    aemg = [sys.executable, "-m", "aemg_dist.cli"]  # this checkout's code, whatever `aemg` is installed
    corpus, tokens, run = (work / STAGE_OUTPUT[stage] for stage in STAGES)
    return {
        "prepare": [*aemg, "prepare", "--source", "synthetic", "--scale", scale, "--subjects", str(subjects),
                    "--out", str(corpus), "--workers", str(workers), "--quiet"],
        "tokenize": [*aemg, "tokenize", "--corpus", str(corpus), "--out", str(tokens), "--workers", str(workers),
                     "--quiet"],
        # one checkpoint and one validation, at the end: the steps measure training, not saving
        "pretrain": [*aemg, "pretrain", "--config", str(ROOT / "configs" / "pretrain" / "tiny.yaml"),
                     f"data.tokens={tokens}", f"run.out={run}", f"optim.max_steps={steps}",
                     f"run.checkpoint_every={steps}", f"run.val_every={steps}", f"data.batch_size={batch_size}",
                     "dist.num_workers=2"],
    }


def corpus_size(scale: str, subjects: int) -> dict:
    """Recordings, subjects and hours of EMG of a size, from the generator's specs (nothing generated)."""
    jobs = synthetic_jobs(SyntheticConfig(scale=scale, subjects=subjects))
    seconds = sum(job.spec.protocol_seconds for job in jobs)
    return {"subjects_per_device": subjects, "subjects": len({(j.spec.name, j.subject) for j in jobs}),
            "recordings": len(jobs), "emg_hours": round(seconds / 3600, 2)}


def measure(scale: str, subjects: int, work: Path, steps: int, workers: int, batch_size: int,
            stages: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # one torch thread per process (STACK_NOTES)
    result = {"size": corpus_size(scale, subjects), "stages": {}}
    commands = stage_commands(scale, subjects, work, steps, workers, batch_size)
    for stage in stages:
        cmd = commands[stage]
        print(f"  {stage}: {' '.join(cmd[1:])}", flush=True)
        # a stage measured again starts afresh: prepare and tokenize would skip what is complete, pretrain resume
        shutil.rmtree(work / STAGE_OUTPUT[stage], ignore_errors=True)
        peaks = run_sampled(cmd, env=env, log=work / f"{stage}.log")
        result["stages"][stage] = {**asdict(peaks), "max_worker_mb": peaks.max_worker_mb,
                                   "max_worker": peaks.max_worker, "kinds_mb": worker_kinds(peaks.workers_mb),
                                   "kinds_private_mb": worker_kinds(peaks.workers_private_mb)}
        print(f"    {_row(peaks)}", flush=True)
    return result


def worker_kinds(workers_mb: dict[str, float]) -> dict[str, float]:
    """The largest peak of each kind of worker: its title at its peak, without the pid and without the fused
    operators after the first (`ray::ReadParquet->SplitBlocks(3)` is a `ray::ReadParquet`), so the two sizes'
    readers compare even when Ray Data fuses them differently."""
    kinds: dict[str, float] = {}
    for worker, rss in workers_mb.items():
        kind = _title(worker).split("->", 1)[0]
        kinds[kind] = max(kinds.get(kind, 0.0), rss)
    return kinds


def kinds_over(small: dict[str, float], large: dict[str, float], limit: float) -> dict[str, float]:
    """Worker kinds at both sizes whose largest peak grew by more than `limit`, with the ratio."""
    return {kind: round(large[kind] / small[kind], 2) for kind in sorted(small.keys() & large.keys())
            if large[kind] > limit * small[kind]}


def _title(worker: str) -> str:
    """A worker's process title, from TreePeaks' "pid title"."""
    return worker.split(" ", 1)[-1]


def _row(peaks: TreePeaks) -> str:
    return (f"{peaks.wall_s:.1f} s, driver {peaks.driver_mb:.0f} MB, max worker {peaks.max_worker_mb:.0f} MB "
            f"({_title(peaks.max_worker)}), Ray daemons {peaks.ray_system_mb:.0f} MB, total {peaks.total_mb:.0f} MB")


def tables(results: dict[str, dict]) -> str:
    """Markdown: stage x size (wall s, peak RSS MB), then the larger size over the smaller per stage."""
    small, large = results
    lines = ["| stage | size | subjects | recordings | EMG h | wall s | driver MB | max worker MB | Ray daemons MB | "
             "total MB | largest worker |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for stage in next(iter(results.values()))["stages"]:
        for name, r in results.items():
            s, p = r["size"], r["stages"][stage]
            lines.append(f"| {stage} | {name} | {s['subjects']} | {s['recordings']} | {s['emg_hours']} | "
                         f"{p['wall_s']:.1f} | {p['driver_mb']:.0f} | {p['max_worker_mb']:.0f} | "
                         f"{p['ray_system_mb']:.0f} | {p['total_mb']:.0f} | {_title(p['max_worker'])} |")
    lines += ["", f"| stage | {large}/{small} wall | driver | max worker | total | worker kinds over {TARGET_RATIO} | "
              f"the same, private memory | <= {TARGET_RATIO} |", "|---|---|---|---|---|---|---|---|"]
    for stage, ratio in ratios(results).items():
        ok = (max(ratio["driver_mb"], ratio["max_worker_mb"], ratio["total_mb"]) <= TARGET_RATIO
              and not ratio["kinds_over"])
        grown = [", ".join(f"{k} {v:.2f}" for k, v in ratio[key].items()) or "-"
                 for key in ("kinds_over", "kinds_private_over")]
        lines.append(f"| {stage} | {ratio['wall_s']:.2f} | {ratio['driver_mb']:.2f} | {ratio['max_worker_mb']:.2f} | "
                     f"{ratio['total_mb']:.2f} | {grown[0]} | {grown[1]} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines)


def ratios(results: dict[str, dict]) -> dict[str, dict]:
    a, b = (r["stages"] for r in results.values())
    return {stage: {**{k: round(b[stage][k] / max(a[stage][k], 1e-9), 3)
                       for k in ("wall_s", "driver_mb", "max_worker_mb", "total_mb")},
                    "kinds_over": kinds_over(a[stage]["kinds_mb"], b[stage]["kinds_mb"], TARGET_RATIO),
                    "kinds_private_over": kinds_over(a[stage]["kinds_private_mb"], b[stage]["kinds_private_mb"],
                                                     TARGET_RATIO)}
            for stage in a}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, default=0.02,
                        help="share of the scale's subjects in the smaller corpus (1.0 = the whole scale; at least "
                             "one subject per device)")
    parser.add_argument("--factor", type=int, default=4, help="the larger corpus has this many times the subjects")
    parser.add_argument("--scale", default="large", help="synthetic scale whose protocol and subjects are used")
    parser.add_argument("--steps", type=int, default=200, help="pretraining steps per size")
    parser.add_argument("--batch-size", type=int, default=32, help="global pretraining batch (the tiny preset's)")
    parser.add_argument("--workers", type=int, default=2, help="CPUs of each stage's local Ray")
    parser.add_argument("--out", default="benchmarks/out/scale", help="folder for scale.json, scale.md and the logs")
    parser.add_argument("--work", help="folder for the corpora, tokens and runs (default: a temporary one, removed)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="stages to measure, in order; the ones left out must have run before in --work")
    args = parser.parse_args()
    if not 0 < args.fraction <= 1 or args.factor < 2:
        parser.error("--fraction must be in (0, 1] and --factor at least 2")
    named = args.stages.split(",")
    stages = [stage for stage in STAGES if stage in named]
    if unknown := set(named) - set(STAGES):
        parser.error(f"--stages: unknown {', '.join(sorted(unknown))} (choose from {', '.join(STAGES)})")
    if stages != list(STAGES) and not args.work:
        parser.error("--stages without every stage needs --work: the folder where the stages left out ran")
    base = max(1, round(args.fraction * default_datasets(args.scale)[0].n_subjects))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-scale-"))
    results = {}
    try:
        for name, subjects in (("1x", base), (f"{args.factor}x", args.factor * base)):
            print(f"{name}: {subjects} subjects per device", flush=True)
            (work / name).mkdir(parents=True, exist_ok=True)
            results[name] = measure(args.scale, subjects, work / name, args.steps, args.workers, args.batch_size,
                                    stages)
            for stage in stages:  # the logs outlive a temporary work folder
                shutil.copy(work / name / f"{stage}.log", out / f"{name}-{stage}.log")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    record = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "scale": args.scale,
              "fraction": args.fraction, "factor": args.factor, "steps": args.steps, "batch_size": args.batch_size,
              "workers": args.workers,
              "cpus": os.cpu_count(), "git": _git_head(), "results": results, "ratios": ratios(results)}
    (out / "scale.json").write_text(json.dumps(record, indent=1))
    table = tables(results)
    (out / "scale.md").write_text(f"`{record['command']}`\n\n{table}\n")
    print(table)


def _git_head() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip()


if __name__ == "__main__":
    main()
