"""From a `TokenBatch` to the Transformer's input: one embedding per token plus a window token.

A token's embedding is the sum of what it is and where/when it happened:

    content   MLP(features), or the learned [MASK] vector when the token is masked
    space     random Fourier features of the electrode coordinates -> linear; a smooth function of
              the position, so a layout never seen in pretraining (a 64-channel grid) still works
    time      sinusoids of the onset (seconds from the window start) and log duration -> MLP
    order     rank inside the group (recruitment order), clamped to max_rank
    group     event index inside the window, clamped to max_groups
    flag      active / quiet / hidden: masking hides whether the channel fired, because which
              channels fire is what the model should infer from the context

There is no embedding of the index in the row: permuting a window's tokens together with their
conditioning changes nothing. A learned window token ([CLS]-like) is prepended to every row and is
always real, so a window without activity (no tokens, all padding) still has one position to
attend to and a pooled representation.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..tokens import TokenBatch
from .transformer import MLP, ModelConfig

_TIME_PERIODS_S = (0.01, 10.0)  # onset sinusoids from contraction timing (10 ms) up to a long window
_MIN_DURATION_S = 1e-3  # floor before the log: padding has duration 0

BATCH_KEYS = ("features", "coords", "onset_s", "duration_s", "rank", "group", "channel", "active", "mask")


def batch_to_torch(batch: TokenBatch, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """The model's input dict: features/coords/onset_s/duration_s float32, rank/group/channel long,
    active/mask bool, all (B, T, ...) on `device`."""
    dtypes = {"f": torch.float32, "i": torch.int64, "u": torch.int64, "b": torch.bool}
    # torch.tensor copies: the batch's arrays may be read-only (Ray object store) and stay untouched
    return {key: torch.tensor(getattr(batch, key), dtype=dtypes[getattr(batch, key).dtype.kind], device=device)
            for key in BATCH_KEYS}


class FourierFeatures(nn.Module):
    """x (..., d_in) -> [sin 2pi xB, cos 2pi xB] (..., 2 n) with fixed Gaussian frequencies B ~ N(0, scale^2).

    B is a persistent buffer (saved with the weights): it is random, so a reloaded model must use
    the same draw.
    """

    def __init__(self, d_in: int, n: int, scale: float):
        super().__init__()
        self.register_buffer("frequencies", torch.randn(d_in, n) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * x @ self.frequencies
        return torch.cat([angle.sin(), angle.cos()], dim=-1)


class TokenEmbedding(nn.Module):
    """Token embeddings (content + space + time + order + group + flag) behind a learned window token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.max_rank, self.max_groups = cfg.max_rank, cfg.max_groups
        self.content = MLP(cfg.n_features, d, d)
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.space_features = FourierFeatures(3, cfg.n_fourier, cfg.fourier_scale)
        self.space = nn.Linear(2 * cfg.n_fourier, d)
        # angular frequencies of the onset sinusoids; a constant of the code, so not saved
        periods = torch.logspace(math.log10(_TIME_PERIODS_S[0]), math.log10(_TIME_PERIODS_S[1]), cfg.n_time_frequencies)
        self.register_buffer("omega", 2 * math.pi / periods, persistent=False)
        self.time = MLP(2 * cfg.n_time_frequencies + 1, d, d)
        self.order = nn.Embedding(cfg.max_rank, d)
        self.group = nn.Embedding(cfg.max_groups, d)
        self.flag = nn.Embedding(3, d)  # 0 quiet, 1 active, 2 hidden by the mask
        self.window_token = nn.Parameter(torch.zeros(d))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, batch: dict[str, torch.Tensor],
                masked: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (embeddings (B, 1 + T, d), key mask (B, 1 + T)); position 0 is the window token.

        masked: (B, T) bool, tokens whose content (features and active flag) is replaced by [MASK].
        """
        real = batch["mask"]
        masked = torch.zeros_like(real) if masked is None else masked
        content = torch.where(masked[..., None], self.mask_token, self.content(batch["features"]))
        angle = batch["onset_s"][..., None] * self.omega
        log_duration = batch["duration_s"].clamp_min(_MIN_DURATION_S).log()[..., None]
        time = self.time(torch.cat([angle.sin(), angle.cos(), log_duration], dim=-1))
        flag = torch.where(masked, 2, batch["active"].long())
        x = (content + self.space(self.space_features(batch["coords"])) + time
             + self.order(batch["rank"].clamp(0, self.max_rank - 1))
             + self.group(batch["group"].clamp(0, self.max_groups - 1)) + self.flag(flag))
        # padding becomes exact zeros, so its values cannot leak into the outputs of real tokens
        x = x.masked_fill(~real[..., None], 0.0)
        window = self.window_token.expand(x.shape[0], 1, -1)
        x = torch.cat([window, x], dim=1)
        key_mask = torch.cat([torch.ones_like(real[:, :1]), real], dim=1)
        return self.dropout(x), key_mask
