"""`model.training_flops` against PyTorch's FlopCounterMode on a real forward + backward, per preset.

The formula (objectives.flops_per_token) counts 6 N per token (N: non-embedding parameters) plus attention, and
leaves out lookups, the codebook search and that some heads see only the masked tokens. The counter counts every
matrix product the step runs. Windows of 128 tokens, every slot a token (no padding), so both count the same
positions:

- small: the parts the formula leaves out are < 1 % of the step (benchmarks/RESULTS.md: within 0.6 %; measured here
  +0.2 % at 128 tokens, +0.4 % over windows of 64 and 128), so the tolerance is 2 %. That catches a factor error
  (2 N or 3 N instead of 6 N: -67 %, -50 %) and a dropped attention term (7 % of small's FLOPs at 128 tokens).
- tiny: its per-token heads and embeddings are large next to a 64-wide, 2-layer Transformer, and the formula counts
  them as if every token used them: counted / formula is ~0.77 at 128 tokens (RESULTS.md's 20 %). The band
  [0.65, 1.1] still catches any factor-of-two error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from aemg_dist.config import load_config
from aemg_dist.model import AEMGModel, ModelConfig, batch_to_torch, training_flops
from aemg_dist.tokens import TokenBatch
from test_model import PRESETS, synthetic_window

WINDOWS = 4


def full_batch(rng: np.random.Generator, length: int) -> dict[str, torch.Tensor]:
    """WINDOWS windows of exactly `length` tokens: synthetic windows' tokens repeated, every slot valid."""
    batch = batch_to_torch(TokenBatch.collate([synthetic_window(rng) for _ in range(WINDOWS)]))
    batch["mask"][:] = True
    reps = -(-length // batch["mask"].shape[1])
    return {k: v.repeat(1, reps, *[1] * (v.dim() - 2))[:, :length].contiguous() for k, v in batch.items()}


def counted_flops(model: AEMGModel, batch: dict[str, torch.Tensor]) -> int:
    with FlopCounterMode(display=False) as counter:
        model(batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


@pytest.mark.parametrize("preset, lengths, low, high", [
    ("tiny", (128,), 0.65, 1.1),
    ("small", (128,), 0.98, 1.02),
    ("small", (64, 128), 0.98, 1.02),  # the per-window sum: attention grows with each window's own length
])
def test_training_flops_match_the_counted_flops(preset, lengths, low, high):
    cfg = load_config(ModelConfig, PRESETS / f"{preset}.yaml")
    torch.manual_seed(0)
    model = AEMGModel(cfg).train()
    rng = np.random.default_rng(0)
    counted = sum(counted_flops(model, full_batch(rng, length)) for length in lengths)
    formula = training_flops(cfg, np.repeat(lengths, WINDOWS))
    assert low <= counted / formula <= high, f"{preset}: counted / formula = {counted / formula:.4f}"
