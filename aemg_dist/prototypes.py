"""What the codebook learned: the contraction prototypes of a pretrained model, drawn.

Each code of the VQ tokenizer names one kind of (event, channel) token. For a sample of token
windows (a `tokenize` output), `codebook_prototypes` assigns every token its code exactly as
pretraining does (tokenizer encoder -> nearest unit code), then gathers per code: how often it is
used, the mean and spread of the token features that chose it, and the feature vector the
tokenizer's decoder makes of the code itself (the prototype). `plot_prototypes` draws the most used
codes: the envelope shape over the event (decoded prototype, and the assigned tokens' mean ± std),
its band powers, and the numbers a person reads first (use, share of active tokens, amplitude,
duration, spectral centroid), above the usage of every code.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aemg_dist.artifacts import read_token_table, read_tokens_manifest, table_to_windows
from aemg_dist.model import batch_to_torch, load_inference
from aemg_dist.tokens import TokenBatch


@dataclass
class Prototypes:
    """Per code k of a K-code codebook; `feature_names` name the F feature columns."""

    feature_names: list[str]
    counts: np.ndarray  # (K,) tokens of the sample assigned to each code
    mean: np.ndarray  # (K, F) mean features of the assigned tokens (nan for an unused code)
    std: np.ndarray  # (K, F)
    decoded: np.ndarray  # (K, F) the decoder's reconstruction of each code: the prototype itself
    n_windows: int

    @property
    def usage(self) -> np.ndarray:
        return self.counts / max(self.counts.sum(), 1)

    def column(self, table: np.ndarray, name: str) -> np.ndarray:
        return table[:, self.feature_names.index(name)]


@torch.no_grad()
def codebook_prototypes(export: str | Path, tokens: str | Path, max_windows: int = 4000, seed: int = 0,
                        batch_size: int = 256) -> Prototypes:
    """Code statistics of the export's tokenizer over up to `max_windows` random windows of a token folder."""
    names = read_tokens_manifest(tokens, "--tokens")["feature_names"]
    model = load_inference(export)
    if len(names) != model.cfg.n_features:
        raise ValueError(f"{tokens} has {len(names)} token features, the model in {export} reads "
                         f"{model.cfg.n_features}: tokens of another tokenizer setting")
    table = read_token_table(tokens)
    rows = np.random.default_rng(seed).permutation(table.num_rows)[:max_windows]
    windows = table_to_windows(table.take(np.sort(rows)))
    k, f = model.cfg.codebook_size, model.cfg.n_features
    counts, sums, squares = np.zeros(k), np.zeros((k, f)), np.zeros((k, f))
    for start in range(0, len(windows), batch_size):
        batch = batch_to_torch(TokenBatch.collate(windows[start:start + batch_size]))
        real = batch["mask"]
        codes = model.tokenizer.quantizer(model.tokenizer.encoder(batch["features"]), real, update=False).codes
        code, features = codes[real].numpy(), batch["features"][real].double().numpy()
        counts += np.bincount(code, minlength=k)
        np.add.at(sums, code, features)
        np.add.at(squares, code, features ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts[:, None]
        std = np.sqrt(np.maximum(squares / counts[:, None] - mean ** 2, 0.0))
    decoded = model.tokenizer.decoder(model.tokenizer.quantizer.codebook).double().numpy()
    return Prototypes(names, counts, mean, std, decoded, len(windows))


def write_prototypes_csv(protos: Prototypes, path: str | Path) -> Path:
    """One row per code: use, then the decoded prototype and the assigned tokens' mean for every feature."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["code", "tokens", "usage", *[f"prototype_{n}" for n in protos.feature_names],
                         *[f"mean_{n}" for n in protos.feature_names]])
        for k in np.argsort(-protos.counts):
            writer.writerow([int(k), int(protos.counts[k]), f"{protos.usage[k]:.5f}",
                             *(f"{v:.4g}" for v in protos.decoded[k]), *(f"{v:.4g}" for v in protos.mean[k])])
    return path


def plot_prototypes(protos: Prototypes, out_png: str | Path, top: int = 24, columns: int = 6) -> Path:
    """The `top` most used codes as small panels under a usage bar chart of every code."""
    from aemg_dist.evaluation.report import pyplot

    plt = pyplot()
    env = [i for i, n in enumerate(protos.feature_names) if n.startswith("env_")]
    bands = [i for i, n in enumerate(protos.feature_names) if n.startswith("band_")]
    order = [k for k in np.argsort(-protos.counts) if protos.counts[k] > 0][:top]
    rows = -(-len(order) // columns)
    fig = plt.figure(figsize=(2.6 * columns, 2.3 * rows + 2.4))
    grid = fig.add_gridspec(rows + 1, columns, height_ratios=[1.1] + [1.0] * rows, hspace=0.75, wspace=0.35)
    ax = fig.add_subplot(grid[0, :])
    ranked = np.sort(protos.usage)[::-1]
    ax.bar(np.arange(ranked.size), ranked, color="#3182bd")
    used = int((protos.counts > 0).sum())
    ax.set_title(f"codebook use over {protos.n_windows} windows ({int(protos.counts.sum())} tokens): {used} of "
                 f"{protos.counts.size} codes used; perplexity {_perplexity(protos.usage):.1f}", fontsize=9)
    ax.set_xlabel("codes, most used first")
    ax.set_ylabel("share of tokens")
    x = np.linspace(0, 1, len(env))
    for i, k in enumerate(order):
        ax = fig.add_subplot(grid[1 + i // columns, i % columns])
        mean, std = protos.mean[k, env], protos.std[k, env]
        ax.fill_between(x, mean - std, mean + std, color="#fdae6b", alpha=0.4, lw=0)
        ax.plot(x, mean, color="#e6550d", lw=1.2, label="assigned tokens")
        ax.plot(x, protos.decoded[k, env], color="#08306b", lw=1.6, ls="--", label="prototype")
        if bands:  # band powers as a small bar inset along the bottom
            inset = ax.inset_axes([0.62, 0.62, 0.36, 0.34])
            inset.bar(np.arange(len(bands)), protos.decoded[k, bands], color="#6baed6")
            inset.set_ylim(0, 1)
            inset.set_xticks([])
            inset.set_yticks([])
        active = protos.column(protos.mean, "active")[k]
        rms = protos.column(protos.mean, "log_rms")[k]
        duration = np.exp(protos.column(protos.mean, "log_duration")[k])
        centroid = protos.column(protos.mean, "centroid")[k]
        ax.set_title(f"code {k}: {100 * protos.usage[k]:.1f} %, {100 * active:.0f} % active\n"
                     f"log RMS {rms:.1f}, {1000 * duration:.0f} ms, centroid {centroid:.2f}", fontsize=7)
        ax.set_ylim(-0.1, 1.3)
        ax.set_xticks([0, 1], ["onset", "offset"], fontsize=6)
        ax.tick_params(labelsize=6)
        if i == 0:
            ax.legend(fontsize=5, loc="lower center")
    fig.suptitle("contraction prototypes: envelope over the event (normalized to its peak), band powers (inset)",
                 fontsize=10)
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out_png


def _perplexity(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))
