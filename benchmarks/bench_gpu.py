"""Training throughput of the DeepSpeed path on one device: tokens/s, MFU, peak memory, step time.

    python benchmarks/bench_gpu.py --presets base,large,xl --zero 0,2,3 --compile off,on \\
        --precision bf16,bf16-autocast --batch 256 --out benchmarks/out/gpu.json --md benchmarks/out/gpu.md
    python benchmarks/bench_gpu.py --presets tiny --zero 0 --compile off --steps 3 --warm 1   # on CPU (CI)
    python benchmarks/bench_gpu.py --one large,0,off,bf16 --batch 256 --profile prof.txt     # where a step goes
    python benchmarks/bench_gpu.py --presets large --zero 0 --compile off --optimizer fused,foreach  # AdamW kernels

Every (preset, ZeRO stage, torch.compile, precision, AdamW implementation) runs in its own process (a fresh
single-rank process group, device memory and DeepSpeed state): the model of the preset, the training loop's
DeepSpeedStepper (forward through the engine, a torch AdamW; `dist.precision` auto is bf16 on a GPU, fp32 on CPU;
`optim.implementation` auto is the fused kernel on a GPU, torch's for-loop on CPU) on
synthetic token windows of `--tokens` tokens each (batch `--batch` windows). After `--warm` steps, `--steps`
steps are timed with the device synchronized. FLOPs per step come from `aemg_dist.model.training_flops`
(6 N per token plus attention, the count the scaling study uses); MFU = achieved FLOP/s / the device's peak
dense bf16 FLOP/s (PEAK_BF16_TFLOPS, looked up by device name; none on CPU). A configuration that runs out of
memory is recorded as such, not as a failure of the benchmark.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# dense bf16 tensor-core peaks (vendor datasheets, TFLOP/s): MFU's denominator
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def peak_tflops(name: str) -> float | None:
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)


def synthetic_batch(n_windows: int, n_tokens: int, n_features: int, seed: int):
    """n_windows windows of n_tokens tokens each: random features, 8 channels on a ring, 4 groups."""
    from aemg_dist.model import batch_to_torch
    from aemg_dist.tokens import TokenBatch, WindowTokens

    rng = np.random.default_rng(seed)
    channel = np.arange(n_tokens) % 8
    angle = 2 * np.pi * channel / 8
    coords = np.stack([np.cos(angle), np.sin(angle), np.zeros(n_tokens)], axis=1).astype(np.float32)
    windows = [WindowTokens(features=rng.normal(size=(n_tokens, n_features)).astype(np.float32), coords=coords,
                            onset_s=np.sort(rng.uniform(0, 2, n_tokens)).astype(np.float32),
                            duration_s=rng.uniform(0.05, 0.5, n_tokens).astype(np.float32),
                            rank=(np.arange(n_tokens) % 8).astype(np.int64),
                            group=(np.arange(n_tokens) // 8 % 4).astype(np.int64), channel=channel.astype(np.int64),
                            active=rng.random(n_tokens) < 0.7) for _ in range(n_windows)]
    return batch_to_torch(TokenBatch.collate(windows))


def write_profile(stepper, data: dict, sync, gpu: bool, path: Path) -> None:
    """Three more steps under torch.profiler: the per-step counts of aten operators, host reads, kernel launches
    and stream synchronizations (first line, also on stderr), then the operators by self CPU and by device time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
        for _ in range(3):
            stepper.step(stepper.forward(data)["loss"])
        sync()
    table = prof.key_averages()
    calls = {row.key: row.count for row in table}
    per_step = (f"per step: {sum(n for key, n in calls.items() if key.startswith('aten::')) / 3:.0f} aten ops, "
                f"{calls.get('aten::item', 0) / 3:.0f} host reads (aten::item), "
                f"{calls.get('cudaLaunchKernel', 0) / 3:.0f} kernel launches, "
                f"{calls.get('cudaStreamSynchronize', 0) / 3:.0f} stream synchronizations")
    print(per_step, file=sys.stderr)
    path.write_text("\n\n".join([per_step] + [table.table(sort_by=key, row_limit=40) for key in
                                                ["self_cpu_time_total"] + (["self_device_time_total"] if gpu else [])]))


def run_one(preset: str, zero: int, compile_model: bool, precision: str, optimizer: str, batch: int, tokens: int,
            steps: int, warm: int, profile: Path | None = None) -> dict:
    """One configuration in this process (a single-rank DeepSpeed engine); with `profile`, three more steps under
    torch.profiler after the timed ones, their operators by self CPU and by device time written there."""
    import torch

    from aemg_dist.model import AEMGModel, training_flops
    from aemg_dist.train import DeepSpeedStepper, load_pretrain_config

    gpu = torch.cuda.is_available()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"DS_ACCELERATOR": "cuda" if gpu else "cpu", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    cfg = load_pretrain_config(None, [f"preset={preset}", f"dist.zero_stage={zero}", f"data.batch_size={batch}",
                                      "dist.num_workers=1", f"dist.precision={precision}",
                                      f"optim.implementation={optimizer}"])
    torch.manual_seed(0)
    model = AEMGModel(cfg.model)
    if gpu:
        model = model.cuda()
    stepper = DeepSpeedStepper(model, cfg, world_size=1)
    if compile_model:
        stepper.engine.compile()
    data = stepper.prepare(synthetic_batch(batch, tokens, cfg.model.n_features, seed=0))
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warm + steps):
        sync()
        started = time.perf_counter()
        out = stepper.forward(data)
        stepper.step(out["loss"])
        sync()
        if step >= warm:
            times.append(time.perf_counter() - started)
    if profile:
        write_profile(stepper, data, sync, gpu, profile)
    step_s = float(np.median(times))
    flops = training_flops(cfg.model, np.full(batch, tokens))
    device = torch.cuda.get_device_name() if gpu else "cpu"
    peak = peak_tflops(device)
    return {"preset": preset, "zero": zero, "compile": compile_model, "device": device,
            "precision": stepper.precision, "optimizer": stepper.optimizer_implementation, "batch": batch,
            "tokens": tokens,
            "step_s": step_s, "tokens_per_s": batch * tokens / step_s, "tflops": flops / step_s / 1e12,
            "mfu": flops / step_s / (peak * 1e12) if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
            "loss": float(out["loss"])}


def markdown(rows: list[dict]) -> str:
    lines = ["| preset | ZeRO | compile | precision | AdamW | step s | tokens/s | TFLOP/s | MFU | peak memory GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        configuration = (f"| {r['preset']} | {r['zero']} | {'on' if r['compile'] else 'off'} | {r['precision']} | "
                         f"{r['optimizer']} |")
        if "error" in r:
            lines.append(f"{configuration} {r['error']} | – | – | – | – |")
            continue
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "–"
        memory = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "–"
        lines.append(f"{configuration} {r['step_s']:.4f} | {r['tokens_per_s']:.0f} | {r['tflops']:.2f} | {mfu} | "
                     f"{memory} |")
    return "\n".join(lines)


def failure(stderr: str) -> str:
    """The line that names the exception (the last one that mentions an Error), not a trailing hint."""
    lines = [line.removeprefix("[rank0]:").strip() for line in stderr.strip().splitlines()]
    named = [line for line in lines if re.search(r"\w(Error|Exception)\b", line)]
    return ((named or lines or ["failed"])[-1])[:120].replace("|", "/")


def write_tables(rows: list[dict], json_path: Path | None, md_path: Path | None) -> None:
    for path, text in ((json_path, json.dumps(rows, indent=1)), (md_path, markdown(rows))):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="base,large,xl")
    parser.add_argument("--zero", default="0,2,3", help="ZeRO stages, comma-separated")
    parser.add_argument("--compile", default="off,on", help="torch.compile: off, on or both (off,on)")
    parser.add_argument("--precision", default="auto",
                        help="dist.precision values, comma-separated: auto (bf16 on GPU, fp32 on CPU), fp32, bf16, "
                             "bf16-autocast")
    parser.add_argument("--optimizer", default="auto",
                        help="optim.implementation values, comma-separated: auto (fused on GPU, for-loop on CPU), "
                             "fused, foreach, for-loop")
    parser.add_argument("--batch", type=int, default=32, help="windows per step")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per window")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warm", type=int, default=5, help="untimed steps first (compilation, allocator)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    parser.add_argument("--profile", type=Path, help="with --one: write a torch.profiler table of 3 steps here")
    # preset,zero,compile,precision[,optimizer]: run one, print JSON
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="write every row as JSON here")
    parser.add_argument("--md", type=Path, help="write the table here")
    args = parser.parse_args()
    if args.one:
        preset, zero, compile_model, precision, optimizer = (args.one.split(",") + ["auto"])[:5]
        print(json.dumps(run_one(preset, int(zero), compile_model == "on", precision, optimizer, args.batch,
                                 args.tokens, args.steps, args.warm, args.profile)))
        return
    rows = []
    for preset, zero, compile_model, precision, optimizer in itertools.product(
            args.presets.split(","), args.zero.split(","), args.compile.split(","), args.precision.split(","),
            args.optimizer.split(",")):
        command = [sys.executable, __file__, "--one", f"{preset},{zero},{compile_model},{precision},{optimizer}",
                   "--batch", str(args.batch), "--tokens", str(args.tokens), "--steps", str(args.steps), "--warm",
                   str(args.warm)]
        failed = {"preset": preset, "zero": int(zero), "compile": compile_model == "on", "precision": precision,
                  "optimizer": optimizer}
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rows.append({**failed, "error": "timeout"})
        else:
            if done.returncode == 0:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            else:
                oom = "out of memory" in done.stderr.lower()
                rows.append({**failed, "error": "out of memory" if oom else failure(done.stderr)})
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
        write_tables(rows, args.out, args.md)  # after every configuration: a run cut short keeps its rows
    print(markdown(rows))
    if not any("error" not in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
