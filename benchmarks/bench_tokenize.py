"""Tokenization throughput and memory: single process vs Ray Data, corpus vs 4x corpus.

    python benchmarks/bench_tokenize.py --out benchmarks/out/tokenize.json
    python benchmarks/bench_tokenize.py --corpus runs/real.zarr      # also time a given corpus

Builds two synthetic corpora (all four simulated devices; the second has 4x the subjects), then
measures, in one invocation so the ratios compare like with like:
- channel-samples per second of `tokenize_corpus(workers=1)` (one process, one core);
- the same work on a warm pool of two spawned processes without Ray (plan every recording, then tokenize and
  write every group; output checks and the manifest left out): what two CPUs give here without Ray's costs;
- the same through Ray Data on 2 CPUs, warm (Ray started and the pipeline run once before);
  after an untimed run (the corpus in the page cache), in --repeats rounds of these runs side by side: each
  speedup is the median of the rounds' own ratios, since the shared machine's speed drifts over minutes (Ray
  stays up between its runs; the CPU its idle processes take during the single-process runs is printed);
- two whole single-process runs at once on the pool (twice the work; the slower one's wall time against one run
  alone): what two CPUs give for this very work here, the reference that separates the hardware's limit from
  what the pipeline loses;
- the CPU seconds of each run (with Ray: the driver and every Ray process): the same work costs more CPU on Ray;
- for the median Ray Data run, the share of the cluster's CPU time its Ray tasks were executing (from
  `ray.timeline()`): near 100 % means the pipeline keeps every CPU busy, and what separates the ratio from 2x
  is per-task cost, not idle CPUs;
- peak resident memory of a whole `aemg tokenize` run (driver, Ray's processes and workers,
  sampled every 0.1 s) on the corpus and on the 4x corpus.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import ray  # noqa: E402

from aemg_dist.artifacts import TokenizeConfig, write_part  # noqa: E402
from aemg_dist.data import group_recordings, plan_recording, tokenize_corpus, tokenize_group  # noqa: E402
from aemg_dist.parallel import ensure_ray  # noqa: E402
from preprocessing.corpus import Corpus  # noqa: E402
from preprocessing.prepare import prepare  # noqa: E402
from preprocessing.synthetic import SyntheticConfig, default_datasets, synthetic_jobs  # noqa: E402
from process_memory import run_sampled  # noqa: E402 - benchmarks/, this script's folder


def synthetic_corpus(out: Path, subjects: int) -> Path:
    specs = [dataclasses.replace(spec, n_subjects=subjects, n_sessions=1) for spec in default_datasets("demo")]
    report = prepare(synthetic_jobs(SyntheticConfig(seed=0, datasets=specs)), out, workers=2, progress=False)
    assert report.ok, report.failed
    return out


def throughput(corpus: Path, scratch: Path, workers: int) -> dict:
    """One run; on Ray, with the share of CPU time its tasks were busy."""
    out = scratch / f"tokens-w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    since, cpu_before = time.time(), _cpu_seconds(workers)
    report = tokenize_corpus(corpus, out, workers=workers, progress=False)
    cpu = _cpu_seconds(workers) - cpu_before
    return {"workers": workers, "wall_s": round(report.wall_seconds, 2), "cpu_s": round(cpu, 2),
            "windows": report.windows, "tokens": report.tokens,
            "mchannel_samples_per_s": round(report.channel_samples / report.wall_seconds / 1e6, 2),
            **({"tasks_busy": round(busy_share(since, time.time()), 3)} if workers > 1 else {})}


def _cpu_seconds(workers: int) -> float:
    """CPU seconds used so far by this process, and with Ray (workers > 1) by every Ray process too: what a run
    costs in CPU, beside what it takes in wall time."""
    own = os.times()
    return own.user + own.system + (_ray_cpu_seconds() if workers > 1 else 0.0)


def compare(corpus: Path, scratch: Path, rounds: int) -> dict:
    """`rounds` rounds of: one process, a warm 2-process pool, two single-process runs at once, Ray Data (warm), side
    by side. The machine's speed drifts over minutes, so each speedup is the median of the rounds' own ratios (runs
    seconds apart), not a ratio of medians taken minutes apart. Ray stays up, idle, during the other runs: the CPU time its processes take
    meanwhile is measured and reported as a share of the single-process run's wall time."""
    throughput(corpus, scratch, workers=1)  # warm-up: the corpus in the page cache
    runs = {"single": [], "pool": [], "pair": [], "ray_data": []}
    idle_ray_cpu = []
    ensure_ray(num_cpus=2)
    throughput(corpus, scratch, workers=2)  # warm-up: workers started, code imported
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(abs, range(2)))  # started, this module and the pipeline's imported
        for _ in range(rounds):
            before = _ray_cpu_seconds()
            runs["single"].append(throughput(corpus, scratch, workers=1))
            idle_ray_cpu.append((_ray_cpu_seconds() - before) / runs["single"][-1]["wall_s"])
            runs["pool"].append(pool_throughput(pool, corpus, scratch))
            pair = list(pool.map(_single_wall, [corpus, corpus], [scratch / "pair-a", scratch / "pair-b"]))
            runs["pair"].append({"workers": 2, "wall_s": round(max(pair), 2)})
            runs["ray_data"].append(throughput(corpus, scratch, workers=2))
    ray.shutdown()
    ratios = {name: [s["wall_s"] / r["wall_s"] * (2 if name == "pair" else 1) for s, r in zip(runs["single"], runs[name])]
              for name in ("pool", "pair", "ray_data")}
    result = {name: sorted(r, key=lambda run: run["wall_s"])[rounds // 2] for name, r in runs.items()}
    result.update({"rounds": rounds, "speedup": round(float(np.median(ratios["ray_data"])), 2),
                   "pool_speedup": round(float(np.median(ratios["pool"])), 2),
                   "speedups": [round(r, 2) for r in ratios["ray_data"]],
                   "pool_speedups": [round(r, 2) for r in ratios["pool"]],
                   "pair_speedup": round(float(np.median(ratios["pair"])), 2),
                   "pair_speedups": [round(r, 2) for r in ratios["pair"]],
                   "idle_ray_cpu_share": round(float(np.median(idle_ray_cpu)), 3)})
    return result


def _ray_cpu_seconds() -> float:
    """CPU seconds used so far by Ray's processes on this machine (daemons and idle workers)."""
    return _cpu_of(process for process in psutil.process_iter(["name", "cmdline"])
                   if "ray" in " ".join(process.info["cmdline"] or []) + (process.info["name"] or "")
                   and "bench_tokenize" not in " ".join(process.info["cmdline"] or []))


def _cpu_of(processes) -> float:
    """Summed user + system CPU seconds of `processes`; one that ended meanwhile counts nothing."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def pool_throughput(pool: ProcessPoolExecutor, corpus: Path, scratch: Path) -> dict:
    """One run of the planning and the tokenizing on a warm pool of processes (no Ray)."""
    cfg = TokenizeConfig()
    out = scratch / "tokens-pool"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    start, cpu_before = time.perf_counter(), _pool_cpu_seconds()
    manifest = Corpus(corpus)
    keys = manifest.keys()
    plans = dict(zip(keys, pool.map(plan_recording, keys, repeat(str(corpus)), repeat(cfg),
                                    chunksize=max(1, len(keys) // 16))))
    groups = group_recordings(manifest, keys, cfg.task_s)
    list(pool.map(_tokenize_group, repeat(str(corpus)), groups,
                  [{s.key: plans[s.key] for s in g} for g in groups], repeat(str(out)), repeat(cfg)))
    return {"workers": 2, "wall_s": round(time.perf_counter() - start, 2),
            "cpu_s": round(_pool_cpu_seconds() - cpu_before, 2)}


def _pool_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its multiprocessing pool's processes."""
    children = [child for child in psutil.Process().children() if _is_pool_process(child)]
    return _cpu_seconds(1) + _cpu_of(children)


def _is_pool_process(process: psutil.Process) -> bool:
    try:
        return "multiprocessing" in " ".join(process.cmdline())
    except psutil.Error:  # ended between the listing and the reading
        return False


def _single_wall(corpus: Path, out: Path) -> float:
    """Wall seconds of one in-process tokenization (what `--workers 1` does), run inside a pool process."""
    shutil.rmtree(out, ignore_errors=True)
    return tokenize_corpus(corpus, out, workers=1, progress=False).wall_seconds


def _tokenize_group(corpus_path: str, group: list, plans: dict, out: str, cfg: TokenizeConfig) -> None:
    tables = list(tokenize_group(Corpus(corpus_path), group, plans.__getitem__, {}, cfg))
    if tables:
        write_part(out, pa.concat_tables(tables))


def busy_share(since: float, until: float) -> float:
    """The share of the cluster's CPU time between two wall-clock instants that Ray tasks spent executing."""
    time.sleep(3)  # workers report task events about once a second
    busy = sum(min(e["ts"] + e["dur"], until * 1e6) - max(e["ts"], since * 1e6) for e in ray.timeline()
               if e.get("ph") == "X" and e.get("name") == "task:execute" and e["ts"] + e["dur"] > since * 1e6)
    return busy / 1e6 / ((until - since) * ray.cluster_resources()["CPU"])


def peak_memory_mb(corpus: Path, out: Path) -> float:
    """Peak summed RSS of `aemg tokenize` and every process it starts (Ray included)."""
    aemg = Path(sys.executable).with_name("aemg")
    return run_sampled([str(aemg), "tokenize", "--corpus", str(corpus), "--out", str(out), "--quiet"]).total_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=2, help="subjects per simulated device in the base corpus")
    parser.add_argument("--corpus", help="also measure throughput on this corpus")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of adjacent timed runs (one process, pool, two at once, Ray Data); medians are reported")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        base = synthetic_corpus(scratch / "base.zarr", args.subjects)
        large = synthetic_corpus(scratch / "large.zarr", 4 * args.subjects)
        corpora = {"synthetic": base, **({"given": Path(args.corpus)} if args.corpus else {})}
        result = {}
        for name, corpus in corpora.items():
            result[name] = compare(corpus, scratch, args.repeats)
        memory = {"base_mb": round(peak_memory_mb(base, scratch / "mem-base"), 1),
                  "large_mb": round(peak_memory_mb(large, scratch / "mem-large"), 1)}
        memory["ratio"] = round(memory["large_mb"] / memory["base_mb"], 3)
        result["memory"] = memory
    print("| corpus | run | windows | tokens | wall s | CPU s | M channel-samples/s |\n|---|---|---|---|---|---|---|")
    for name in corpora:
        for run in ("single", "ray_data"):
            r = result[name][run]
            print(f"| {name} | {run} ({r['workers']} worker{'s' if r['workers'] > 1 else ''}) | {r['windows']} | "
                  f"{r['tokens']} | {r['wall_s']} | {r['cpu_s']} | {r['mchannel_samples_per_s']} |")
        print(f"Ray Data (2 CPUs, warm) / single process on {name}: {result[name]['speedup']}x (median of the rounds' "
              f"ratios {result[name]['speedups']}); Ray tasks executing "
              f"{result[name]['ray_data']['tasks_busy']:.0%} of the CPU time of that run; a 2-process pool without Ray "
              f"({result[name]['pool']['wall_s']} s, {result[name]['pool']['cpu_s']} CPU-s): {result[name]['pool_speedup']}x "
              f"{result[name]['pool_speedups']}; "
              f"Ray's idle processes used {result[name]['idle_ray_cpu_share']:.1%} of a CPU during the single-process "
              f"runs; two whole single-process runs at once: {result[name]['pair_speedup']}x the work of one "
              f"{result[name]['pair_speedups']} (what two CPUs give for this work)")
    print(f"peak memory of `aemg tokenize`: {memory['base_mb']} MB (corpus) vs {memory['large_mb']} MB (4x corpus): "
          f"ratio {memory['ratio']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
