"""A recorded loss curve pins pretraining: the tiny preset, `--no-ray`, 50 steps on a fixed synthetic corpus.

Any numerical drift in the synthetic generator, harmonization, the tokenizer, the model, its initialisation, the
objectives or the optimiser changes these numbers and fails the test (torchtitan's loss-curve tests, STYLE.md).

The recorded curve is tests/golden/tiny_loss.json. After a deliberate change of the numbers, regenerate it with

    AEMG_REGENERATE_GOLDEN=1 OMP_NUM_THREADS=1 python -m pytest tests/test_golden.py

which writes the file and then fails (so a regeneration never passes silently); rerun without the variable and
commit the file with the change that moved it, saying why in the commit message.

Tolerance: relative 1e-4 (absolute 1e-6). The run is seeded and single-threaded, so on one machine and one torch
build it repeats bit for bit (the test runs it twice and checks that). Elsewhere, float32 kernels may sum in
another order (another CPU's vector width, another oneDNN/MKL build): ~1e-7 relative per reduction, amplified by
50 optimiser steps to ~1e-5 at most. Small real changes move it by 1e-3 relative: scaling one token feature's
RMS by 1.001, or the weight initialisation's std from 0.02 to 0.0201, each failed this test (step 30, step 8).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from aemg_dist.data import tokenize_corpus
from aemg_dist.train import load_pretrain_config, pretrain

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden" / "tiny_loss.json"
REGENERATE = "AEMG_REGENERATE_GOLDEN"
STEPS = 50
CURVES = ("loss", "recon_loss", "mtm_loss", "perplexity")  # per step; perplexity: the codebook's use
RTOL, ATOL = 1e-4, 1e-6


@pytest.fixture(scope="module")
def golden_tokens(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("golden") / "tokens"
    tokenize_corpus(tiny_corpus, out, workers=1, progress=False)
    return out


def run_curve(tokens: Path, out: Path) -> dict[str, list[float]]:
    """The per-step curves of a 50-step `--no-ray` tiny run (every step logged)."""
    cfg = load_pretrain_config(REPO / "configs" / "pretrain" / "tiny.yaml", [
        f"data.tokens={tokens}", f"run.out={out}", "dist.ray=false", f"optim.max_steps={STEPS}",
        "data.batch_size=16", "optim.warmup_steps=5", "run.log_every=1", f"run.val_every={STEPS}",
        f"run.checkpoint_every={STEPS}", "run.seed=0"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one summation order (OMP_NUM_THREADS=1 does the same for the whole process)
    try:
        pretrain(cfg)
    finally:
        torch.set_num_threads(threads)
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(float(r["step"])) for r in rows] == list(range(1, STEPS + 1))
    return {name: [float(r[name]) for r in rows] for name in CURVES}


def test_tiny_pretraining_repeats_the_recorded_loss_curve(golden_tokens, tmp_path):
    curve = run_curve(golden_tokens, tmp_path / "a")
    if os.environ.get(REGENERATE) == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"steps": STEPS, "torch": torch.__version__, "curves": curve}, indent=1) + "\n")
        pytest.fail(f"{REGENERATE}=1: wrote {GOLDEN}; rerun without it and commit the file (never passes silently)")
    assert GOLDEN.exists(), f"no recorded curve at {GOLDEN}; record it with {REGENERATE}=1 (see this test's docstring)"
    recorded = json.loads(GOLDEN.read_text())
    assert recorded["steps"] == STEPS and set(recorded["curves"]) == set(CURVES)
    again = run_curve(golden_tokens, tmp_path / "b")
    for name in CURVES:
        assert again[name] == curve[name], f"{name}: two identical runs differ; the test cannot pin anything"
        got, want = np.array(curve[name]), np.array(recorded["curves"][name])
        bad = np.flatnonzero(~np.isclose(got, want, rtol=RTOL, atol=ATOL))
        assert not bad.size, (f"{name} left the recorded curve at step {bad[0] + 1}: {got[bad[0]]!r} vs "
                              f"{want[bad[0]]!r} (recorded with torch {recorded['torch']}, now {torch.__version__}); "
                              f"if the change is intended, regenerate: {REGENERATE}=1 (see the docstring)")
