"""`aemg plot prototypes`: per-code statistics of a pretrained tokenizer over token windows, and the plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aemg_dist import cli
from aemg_dist.artifacts import read_token_table, table_to_windows
from aemg_dist.data import tokenize_corpus
from aemg_dist.model import batch_to_torch, load_inference
from aemg_dist.prototypes import codebook_prototypes
from aemg_dist.tokens import TokenBatch
from aemg_dist.train import load_pretrain_config, pretrain

TINY = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "tiny.yaml"


@pytest.fixture(scope="module")
def run(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("prototypes")
    tokenize_corpus(tiny_corpus, root / "tokens", workers=1, progress=False)
    pretrain(load_pretrain_config(TINY, [f"data.tokens={root / 'tokens'}", f"run.out={root / 'pt'}", "dist.ray=false",
                                         "optim.max_steps=20", "data.batch_size=16", "run.log_every=10"]))
    return root


def test_every_token_of_the_sample_is_counted_under_the_code_the_model_gives_it(run):
    protos = codebook_prototypes(run / "pt" / "export", run / "tokens", max_windows=10_000)
    windows = table_to_windows(read_token_table(run / "tokens"))
    assert protos.n_windows == len(windows) and protos.counts.sum() == sum(w.n_tokens for w in windows)
    model = load_inference(run / "pt" / "export")
    batch = batch_to_torch(TokenBatch.collate(windows))
    with torch.no_grad():
        codes = model.tokenizer.quantizer(model.tokenizer.encoder(batch["features"]), batch["mask"], update=False).codes
    real = batch["mask"]
    expected = np.bincount(codes[real].numpy(), minlength=model.cfg.codebook_size)
    np.testing.assert_array_equal(protos.counts, expected)
    code = int(np.argmax(expected))  # the mean features of the most used code, recomputed
    np.testing.assert_allclose(protos.mean[code], batch["features"][real][codes[real] == code].double().mean(0).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert protos.decoded.shape == (model.cfg.codebook_size, model.cfg.n_features)
    assert np.isnan(protos.mean[protos.counts == 0]).all()


def test_cli_writes_the_plot_and_the_table(run, tmp_path, capsys):
    out = tmp_path / "protos.png"
    assert cli.main(["plot", "prototypes", "--checkpoint", str(run / "pt"), "--tokens", str(run / "tokens"),
                     "--out", str(out), "--windows", "200", "--top", "8"]) == 0
    assert out.stat().st_size > 20_000 and out.with_suffix(".csv").read_text().count("\n") == 64 + 1
    assert "codes used" in capsys.readouterr().out
    assert cli.main(["plot", "prototypes", "--checkpoint", str(tmp_path), "--tokens", str(run / "tokens")]) == 2
