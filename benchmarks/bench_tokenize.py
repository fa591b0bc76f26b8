"""Tokenization throughput and memory: single process vs Ray Data, corpus vs 4x corpus.

    python benchmarks/bench_tokenize.py --out benchmarks/out/tokenize.json
    python benchmarks/bench_tokenize.py --corpus runs/real.zarr      # also time a given corpus

Builds two synthetic corpora (all four simulated devices; the second has 4x the subjects), then
measures, in one invocation so the ratios compare like with like:
- channel-samples per second of `tokenize_corpus(workers=1)` (one process, one core);
- the same through Ray Data on 2 CPUs, once warm (Ray started and the pipeline run once before);
  both after an untimed run (the corpus in the page cache), the median of --repeats runs;
- the same work on a warm pool of two spawned processes without Ray (plan every recording, then tokenize and
  write every group; output checks and the manifest left out): what two CPUs give here without Ray's costs;
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
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402

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


def throughput(corpus: Path, scratch: Path, workers: int, repeats: int = 1) -> dict:
    """The run of median wall time of `repeats` runs; on Ray, with the share of CPU time its tasks were busy."""
    runs = []
    for _ in range(repeats):
        out = scratch / f"tokens-w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        since = time.time()
        report = tokenize_corpus(corpus, out, workers=workers, progress=False)
        runs.append((report, busy_share(since, time.time()) if workers > 1 else None))
    report, busy = sorted(runs, key=lambda r: r[0].wall_seconds)[len(runs) // 2]
    return {"workers": workers, "wall_s": round(report.wall_seconds, 2), "windows": report.windows, "repeats": repeats,
            "tokens": report.tokens, "mchannel_samples_per_s": round(report.channel_samples / report.wall_seconds / 1e6, 2),
            **({"tasks_busy": round(busy, 3)} if busy is not None else {})}


def pool_throughput(corpus: Path, scratch: Path, repeats: int) -> dict:
    """Median wall time of `repeats` runs of the planning and the tokenizing on a pool of 2 processes (no Ray)."""
    cfg, walls = TokenizeConfig(), []
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(abs, range(2)))  # started, this module and the pipeline's imported
        for _ in range(repeats):
            out = scratch / "tokens-pool"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            start = time.perf_counter()
            manifest = Corpus(corpus)
            keys = manifest.keys()
            plans = dict(zip(keys, pool.map(plan_recording, keys, repeat(str(corpus)), repeat(cfg),
                                            chunksize=max(1, len(keys) // 16))))
            groups = group_recordings(manifest, keys, cfg.task_s)
            list(pool.map(_tokenize_group, repeat(str(corpus)), groups,
                          [{s.key: plans[s.key] for s in g} for g in groups], repeat(str(out)), repeat(cfg)))
            walls.append(time.perf_counter() - start)
    return {"workers": 2, "wall_s": round(sorted(walls)[len(walls) // 2], 2), "repeats": repeats}


def _tokenize_group(corpus_path: str, group: list, plans: dict, out: str, cfg: TokenizeConfig) -> None:
    tables = list(tokenize_group(Corpus(corpus_path), group, plans.__getitem__, {}, cfg))
    if tables:
        write_part(out, pa.concat_tables(tables))


def busy_share(since: float, until: float) -> float:
    """The share of the cluster's CPU time between two wall-clock instants that Ray tasks spent executing."""
    import ray

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
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (the median is reported)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        base = synthetic_corpus(scratch / "base.zarr", args.subjects)
        large = synthetic_corpus(scratch / "large.zarr", 4 * args.subjects)
        corpora = {"synthetic": base, **({"given": Path(args.corpus)} if args.corpus else {})}
        result = {}
        for name, corpus in corpora.items():
            throughput(corpus, scratch, workers=1)  # warm-up: the corpus in the page cache for both runs
            single = throughput(corpus, scratch, workers=1, repeats=args.repeats)
            pool = pool_throughput(corpus, scratch, args.repeats)
            ensure_ray(num_cpus=2)
            throughput(corpus, scratch, workers=2)  # warm-up: workers started, code imported
            ray_data = throughput(corpus, scratch, workers=2, repeats=args.repeats)
            result[name] = {"single": single, "ray_data": ray_data, "pool": pool,
                            "speedup": round(single["wall_s"] / ray_data["wall_s"], 2),
                            "pool_speedup": round(single["wall_s"] / pool["wall_s"], 2)}
        memory = {"base_mb": round(peak_memory_mb(base, scratch / "mem-base"), 1),
                  "large_mb": round(peak_memory_mb(large, scratch / "mem-large"), 1)}
        memory["ratio"] = round(memory["large_mb"] / memory["base_mb"], 3)
        result["memory"] = memory
    print("| corpus | run | windows | tokens | wall s | M channel-samples/s |\n|---|---|---|---|---|---|")
    for name in corpora:
        for run in ("single", "ray_data"):
            r = result[name][run]
            print(f"| {name} | {run} ({r['workers']} worker{'s' if r['workers'] > 1 else ''}) | {r['windows']} | "
                  f"{r['tokens']} | {r['wall_s']} | {r['mchannel_samples_per_s']} |")
        print(f"Ray Data (2 CPUs, warm) / single process on {name}: {result[name]['speedup']}x; Ray tasks executing "
              f"{result[name]['ray_data']['tasks_busy']:.0%} of the CPU time of that run; a 2-process pool without Ray "
              f"({result[name]['pool']['wall_s']} s): {result[name]['pool_speedup']}x")
    print(f"peak memory of `aemg tokenize`: {memory['base_mb']} MB (corpus) vs {memory['large_mb']} MB (4x corpus): "
          f"ratio {memory['ratio']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
