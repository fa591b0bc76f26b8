"""Every evaluation method beats chance by a margin on an easy synthetic task.

The tiny synthetic corpus's synth_myo dataset (4 gestures from muscle synergies) under the strict LOSO protocol (2
folds), every method at the 100 % calibration budget with calibration windows weighing 0.9 of adaptation (the held-out
subject's own labels decide). Chance is 1/4 balanced accuracy; each method must reach chance + MARGIN on average over
the folds. Measured (mean of the two folds): 0.59 (aemg_finetune, after a 20-step pretraining) to 0.98 (cnn, simclr);
with the calibration labels shuffled every method fell to 0.38-0.47, so a method that learns from labels not
belonging to its windows fails here (the bookkeeping tests only check that accuracies lie in [0, 1]). The run is
seeded per (method, dataset, subject), so these numbers repeat on one build.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from aemg_dist.config import load_config
from aemg_dist.data import tokenize_corpus
from aemg_dist.evaluation.methods import METHODS
from aemg_dist.evaluation.runner import EvaluateConfig, evaluate
from aemg_dist.train import load_pretrain_config, pretrain
from test_train import TINY

DATASET = "synth_myo"
MARGIN = 0.25  # over chance (0.25 for 4 classes): the weakest working method 0.59, the best broken one 0.47


@pytest.fixture(scope="module")
def scores(tiny_corpus, tmp_path_factory):
    """Mean balanced accuracy per (method, budget) over the LOSO folds; the AEMG checkpoint never saw the dataset."""
    root = tmp_path_factory.mktemp("chance")
    tokenize_corpus(tiny_corpus, root / "tokens", workers=1, progress=False)
    pretrain(load_pretrain_config(TINY, [f"data.tokens={root / 'tokens'}", f"run.out={root / 'run'}",
                                         "dist.ray=false", "optim.max_steps=20", "data.batch_size=16",
                                         f"data.exclude_datasets=[{DATASET}]"]))
    cfg = load_config(EvaluateConfig, None, [
        f"corpus={tiny_corpus}", f"out={root / 'results'}", f"datasets=[{DATASET}]", f"checkpoints=[{root / 'run'}]",
        "windows.length_s=0.2", "windows.stride_s=0.1", "windows.margin_s=0.1", "train.base_steps=60",
        "train.adapt_steps=60", "train.adapt_lr=1e-3", "train.calib_share=0.9", "train.pretrain_steps=10", "train.batch_size=16", "budgets=[0,100]", "seeds=[0]",
        "workers=1"])
    result = evaluate(cfg, progress=False)
    by = defaultdict(list)
    for row in result.rows:
        by[row["method"], row["budget"]].append(row["balanced_accuracy"])
        n_classes = len(row["classes"])
    return {k: float(np.mean(v)) for k, v in by.items()}, n_classes


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_beats_chance_with_calibration(scores, method):
    means, n_classes = scores
    assert n_classes == 4
    assert means[method, 100.0] >= 1 / n_classes + MARGIN, {k: round(v, 3) for k, v in means.items()}
