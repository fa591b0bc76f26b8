"""The model config and the pre-norm Transformer encoder that reads a window of tokens.

The encoder is nanoGPT's block without the causal mask: every token attends to every real token
of its window (padding is excluded through a key mask), so the order of tokens in a row carries
no meaning by itself. Where a token sits in space and time comes only from its embedding (see
embeddings.py), never from its index in the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from aemg_dist.artifacts import model_preset, model_preset_names
from aemg_dist.config import check_ranges

OBJECTIVES = ("joint", "tokenizer", "masked")
# the fields that size the model (and the memory and time it takes to build), with their least value; a codebook
# of one code carries no information
SIZE_FIELDS = {"n_features": 1, "d_model": 1, "n_layers": 1, "n_heads": 1, "n_fourier": 1, "n_time_frequencies": 1,
               "max_rank": 1, "max_groups": 1, "tokenizer_hidden": 1, "codebook_size": 2, "codebook_dim": 1}
SIZE_HEADROOM = 8  # a size may be this many times the largest any preset (or the default) uses


@lru_cache(maxsize=1)
def size_limits() -> dict[str, float]:
    """The largest value of every size field (and of mlp_ratio and kmeans_iters): SIZE_HEADROOM x the largest of
    the presets (configs/model/*.yaml) and the defaults.

    Derived from the presets rather than fixed, so a new larger preset moves them. They are far beyond any
    model this project trains, and they stop a config (or a checkpoint's config.json) that asks for a billion
    layers before anything is built: building one took minutes of a climbing memory before failing."""
    presets = [model_preset(name) for name in model_preset_names()]
    defaults = {f.name: f.default for f in fields(ModelConfig)}
    return {name: SIZE_HEADROOM * max(float(p.get(name, defaults[name])) for p in [defaults, *presets])
            for name in [*SIZE_FIELDS, "mlp_ratio", "kmeans_iters"]}


@dataclass
class ModelConfig:
    """Every knob of the model; invalid values raise ValueError at construction (sizes are bounded by
    `size_limits`).

    objective: "joint" trains the VQ tokenizer (reconstruction) and masked token modeling
    together; "tokenizer" is stage 1 of two-stage training (VQ reconstruction only, the
    Transformer is frozen and not run); "masked" is stage 2 (the tokenizer and its codebook are
    frozen and only provide the targets of masked token modeling).
    """

    n_features: int = 32  # F, len(feature_names(TokenConfig())) for the default tokenizer
    # Transformer
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0  # hidden size of the Transformer MLP = mlp_ratio * d_model
    dropout: float = 0.0
    # conditioning embeddings
    n_fourier: int = 32  # random Fourier frequencies of the 3-D electrode coordinates
    fourier_scale: float = 2.0  # their std, in cycles per forearm radius (the coordinates' unit)
    n_time_frequencies: int = 16  # sinusoids of the onset time, periods 10 ms .. 10 s
    max_rank: int = 64  # ranks >= max_rank - 1 share the last order embedding
    max_groups: int = 32  # group indices >= max_groups - 1 share the last group embedding
    # VQ tokenizer: per-token MLP encoder -> cosine codebook -> per-token MLP decoder
    tokenizer_hidden: int = 128
    codebook_size: int = 64  # K contraction prototypes
    codebook_dim: int = 32
    # weight of the commitment loss. The squared distance between unit vectors is small (2 - 2 cos),
    # so VQ-VAE's 0.25 is too weak to keep the encoder near its codes: on tokenized synthetic EMG
    # (tiny, no restarts) the batch perplexity fell from 54 to 1.5 in 30 steps with 0.25, not below 14 with 1.0
    commitment: float = 1.0
    ema_decay: float = 0.99
    dead_code_steps: int = 50  # a code unused for this many training steps is re-seeded
    kmeans_iters: int = 10  # Lloyd iterations of the k-means initialisation
    # masked token modeling
    mask_ratio: float = 0.3  # fraction of real tokens (or of groups) masked per window
    mask_whole_groups: bool = False
    # masked feature regression: also predict the masked tokens' features (MSE), weighted by this; 0 = off
    feature_weight: float = 0.0
    # view consistency (augment.py): InfoNCE between the pooled outputs of two augmented views; 0 = off
    contrast_weight: float = 0.0
    contrast_temperature: float = 0.1
    augment_gain_std: float = 0.3  # std of the log gain per channel
    augment_rotation: float = 0.4  # radians: the layout turns by up to this around the forearm
    augment_drop: float = 0.15  # share of tokens dropped
    augment_noise: float = 0.05  # std of the noise on every feature
    gain_features: list[int] = field(default_factory=lambda: [16, 17, 18])  # log_peak, log_rms, log_snr (default tokens)
    # objective
    objective: str = "joint"
    recon_weight: float = 1.0
    mtm_weight: float = 1.0

    def __post_init__(self) -> None:
        limits = size_limits()
        check_ranges(
            self, **{name: f"[{low}, {limits[name]:g}]" for name, low in SIZE_FIELDS.items()},
            mlp_ratio=f"(0, {limits['mlp_ratio']:g}]", dropout="[0, 1)", fourier_scale="(0, inf)", ema_decay="[0, 1)",
            dead_code_steps="[1, inf)", kmeans_iters=f"[0, {limits['kmeans_iters']:g}]", mask_ratio="[0, 1)",
            contrast_temperature="(0, inf)", augment_drop="[0, 1)", gain_features=f"[0, {self.n_features})",
            **dict.fromkeys(("commitment", "recon_weight", "mtm_weight", "feature_weight", "contrast_weight",
                             "augment_gain_std", "augment_rotation", "augment_noise"), "[0, inf)"))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.mask_ratio == 0 and self.objective != "tokenizer":
            raise ValueError(f"objective {self.objective!r} predicts masked tokens: mask_ratio must be > 0")

    @property
    def d_ff(self) -> int:
        return int(self.mlp_ratio * self.d_model)


class MLP(nn.Module):
    """Linear -> GELU -> Linear (-> dropout): the Transformer's MLP and every small per-token network."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(d_in, d_hidden)
        self.proj = nn.Linear(d_hidden, d_out)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the real positions of each row."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        # key_mask (B, T) -> (B, 1, 1, T): every query sees the real keys of its row, never padding
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :],
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, cfg.d_model, cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), key_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """n_layers pre-norm blocks and a final LayerNorm: (B, T, d) embeddings -> (B, T, d) outputs.

    key_mask (B, T) bool, True = real position. Every row needs at least one real position (the
    model's window token guarantees it); padded positions produce outputs that must be ignored.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        return self.layers(x, key_mask)[-1]

    def layers(self, x: torch.Tensor, key_mask: torch.Tensor) -> list[torch.Tensor]:
        """The output of every block, (B, T, d) each; the last after the final LayerNorm (forward's output)."""
        outputs = []
        for block in self.blocks:
            x = block(x, key_mask)
            outputs.append(x)
        outputs[-1] = self.ln_f(x)
        return outputs
