"""Model size presets: parameters and training FLOPs per token, and a tiny-model CPU step time.

    python benchmarks/bench_model_sizes.py [--seq-len 128] [--batch 32] [--repeats 20]

(a) For every configs/model/*.yaml preset: parameters (all, and without the lookup tables) and
    training FLOPs per token at --seq-len tokens per window (`flops_per_token`: 6 N + 12 L d (T + 1)).
    Models are built on the meta device, so even xl allocates nothing.
(b) One training step (forward + backward + AdamW, joint objective) of the tiny preset on CPU, one
    thread, on random windows of --seq-len tokens (a quarter of the rows padded to half length, like
    a real batch): median over --repeats steps after two warm-up steps, and the FLOP rate it implies.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # single-core numbers, whatever the BLAS build

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aemg_dist.config import load_config  # noqa: E402
from aemg_dist.model import AEMGModel, ModelConfig, flops_per_token, param_count  # noqa: E402

PRESETS = ("tiny", "small", "base", "large", "xl")


def preset(name: str) -> ModelConfig:
    return load_config(ModelConfig, ROOT / "configs" / "model" / f"{name}.yaml")


def random_batch(cfg: ModelConfig, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    """Random token windows in the model's input format; the last quarter of rows is half padding."""
    mask = torch.ones(batch, seq_len, dtype=torch.bool)
    mask[3 * batch // 4:, seq_len // 2:] = False
    group = torch.arange(seq_len).expand(batch, seq_len) // 8
    return {
        "features": torch.randn(batch, seq_len, cfg.n_features), "coords": torch.randn(batch, seq_len, 3),
        "onset_s": torch.rand(batch, seq_len) * 2, "duration_s": torch.rand(batch, seq_len) * 0.3,
        "rank": torch.arange(seq_len).expand(batch, seq_len) % 8, "group": group,
        "channel": torch.arange(seq_len).expand(batch, seq_len) % 8, "active": torch.rand(batch, seq_len) < 0.7,
        "mask": mask,
    }


def step_time(cfg: ModelConfig, batch: int, seq_len: int, repeats: int) -> float:
    """Median seconds of one forward + backward + AdamW step."""
    torch.manual_seed(0)
    model = AEMGModel(cfg).train()
    optimizer = torch.optim.AdamW(model.param_groups(weight_decay=0.1), lr=1e-3)
    data = random_batch(cfg, batch, seq_len)
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        loss = model(data)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return sorted(times[2:])[len(times[2:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread\n")

    print(f"| preset | d_model | layers | heads | K | params | non-embedding | MFLOPs/token (T={args.seq_len}) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in PRESETS:
        cfg = preset(name)
        print(f"| {name} | {cfg.d_model} | {cfg.n_layers} | {cfg.n_heads} | {cfg.codebook_size} "
              f"| {param_count(cfg) / 1e6:.2f} M | {param_count(cfg, non_embedding=True) / 1e6:.2f} M "
              f"| {flops_per_token(cfg, args.seq_len) / 1e6:.1f} |")

    cfg = preset("tiny")
    seconds = step_time(cfg, args.batch, args.seq_len, args.repeats)
    tokens = args.batch * args.seq_len * 7 / 8  # real tokens: a quarter of the rows is half padding
    print(f"\ntiny training step on CPU (batch {args.batch} x {args.seq_len} slots, {tokens:.0f} real tokens): "
          f"{seconds * 1e3:.1f} ms, {tokens / seconds:,.0f} tokens/s, "
          f"{flops_per_token(cfg, args.seq_len) * tokens / seconds / 1e9:.2f} GFLOP/s by the formula")


if __name__ == "__main__":
    main()
