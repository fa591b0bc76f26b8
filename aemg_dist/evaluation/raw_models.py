"""Raw-signal baselines: a 1D-CNN and a patch Transformer, with SimCLR and MAE pretraining.

They read harmonized EMG windows x (B, T, C) float32 (time x channels, per-channel robust
z-scored, so values are O(1)) and give `features(x)` (B, feature_dim) and `forward(x)` logits
through a linear `head`, so the evaluation runner fine-tunes every baseline the same way.

- `RawCNN`: four strided Conv1d blocks over time (channels are the input features), GroupNorm,
  GELU, global average pool. GroupNorm rather than BatchNorm: a calibration budget of 1 % gives
  batches of a handful of windows, and train and eval mode must then compute the same thing.
- `PatchTransformer`: non-overlapping time patches of `patch` samples x all channels, a linear
  embedding, learned positions, a [CLS] token and the project's pre-norm encoder
  (aemg_dist/model/transformer.py); the features are the CLS output after the final LayerNorm.
- SimCLR (Chen et al. 2020) for the CNN: two `augment`ed views per window, `ProjectionHead`,
  `nt_xent`.
- MAE (He et al. 2022) for the Transformer: the encoder sees only the visible patches (the
  original MAE, cheaper than running mask tokens through the encoder and leaves no mask token in
  the encoder); `MAEDecoder` inserts its own mask token and reconstructs the masked patches.
  Targets are the raw samples, not per-patch normalized ones: the windows are already z-scored
  per channel, and a patch's own mean and scale (how strongly the muscles are active) is the main
  gesture cue in EMG, which per-patch normalization would remove from the task.

`pretrain_simclr` / `pretrain_mae` train an encoder in place from unlabeled windows, on the CPU
(batches and generators are CPU tensors); the projection head and decoder live only inside the call.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from aemg_dist.model.transformer import ModelConfig, Transformer


def _check_windows(x: torch.Tensor, n_channels: int) -> None:
    if x.dim() != 3 or x.shape[2] != n_channels:
        raise ValueError(f"expected windows (B, T, {n_channels}), got shape {tuple(x.shape)}")


# ---------------------------------------------------------------- 1D-CNN

class RawCNN(nn.Module):
    """(B, T, C) windows -> four Conv1d/GroupNorm/GELU blocks -> mean over time -> dropout.

    The first block has kernel 9 and stride 4, the others kernel 5 and stride 2: T = 500 becomes
    125, 63, 32, 16 steps and one output step sees 121 samples (~120 ms at 1000 Hz). Striding by 4
    first rather than 2 costs a third of the time per step on CPU. Dropout acts on the pooled
    features only: on the (B, width, T) activations it took as long as the convolutions.
    """

    def __init__(self, n_channels: int, n_classes: int, width: int = 64, dropout: float = 0.1):
        super().__init__()
        self.n_channels = n_channels
        self.feature_dim = width
        layers = []
        for i, (kernel, stride) in enumerate(((9, 4), (5, 2), (5, 2), (5, 2))):
            layers += [nn.Conv1d(n_channels if i == 0 else width, width, kernel, stride, padding=kernel // 2),
                       nn.GroupNorm(math.gcd(8, width), width), nn.GELU()]
        self.blocks = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, width): the time-averaged output of the last block."""
        _check_windows(x, self.n_channels)
        return self.dropout(self.blocks(x.transpose(1, 2)).mean(dim=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ---------------------------------------------------------------- patch Transformer

class PatchTransformer(nn.Module):
    """(B, T, C) windows -> T // patch patches of patch x C samples -> [CLS] + patch tokens -> encoder.

    The last T % patch samples of a window are dropped (a 510-sample window with patch 25 reads
    its first 500), so every token covers the same duration.
    """

    def __init__(self, n_channels: int, n_classes: int, patch: int = 25, d_model: int = 64, n_layers: int = 2,
                 n_heads: int = 4, max_patches: int = 64, dropout: float = 0.1):
        super().__init__()
        self.n_channels, self.patch, self.max_patches = n_channels, patch, max_patches
        self.feature_dim = d_model
        self.embed = nn.Linear(patch * n_channels, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(1, max_patches, d_model))
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, d_model))
        self.dropout = nn.Dropout(dropout)
        self.encoder = Transformer(ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads, dropout=dropout))
        self.head = nn.Linear(d_model, n_classes)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T // patch, patch * C), each patch's samples time-major."""
        _check_windows(x, self.n_channels)
        n = x.shape[1] // self.patch
        if not 1 <= n <= self.max_patches:
            raise ValueError(f"a window of {x.shape[1]} samples gives {n} patches of {self.patch}; "
                             f"1 to max_patches={self.max_patches} are supported")
        return x[:, :n * self.patch].reshape(x.shape[0], n, self.patch * self.n_channels)

    def tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, P, patch * C) -> (B, P, d_model) patch embeddings with their positions."""
        return self.embed(patches) + self.pos[:, :patches.shape[1]]

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) patch tokens (all, or MAE's visible ones) -> (B, 1 + L, d_model), CLS first."""
        h = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        key_mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        return self.encoder(self.dropout(h), key_mask)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, d_model): the CLS output after the final LayerNorm."""
        return self.encode(self.tokens(self.patchify(x)))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ---------------------------------------------------------------- MAE

class MAEDecoder(nn.Module):
    """Encoder outputs of the visible patches -> reconstructed samples of every patch.

    The visible tokens are put back at their positions, every masked position gets the learned
    mask token, all get decoder positions, and a small Transformer and a linear layer predict
    patch x C samples per position.
    """

    def __init__(self, d_model: int, patch: int, n_channels: int, max_patches: int = 64, d_decoder: int = 64,
                 n_layers: int = 1, n_heads: int = 4):
        super().__init__()
        self.proj = nn.Linear(d_model, d_decoder)
        self.mask_token = nn.Parameter(0.02 * torch.randn(d_decoder))
        self.pos = nn.Parameter(0.02 * torch.randn(1, max_patches, d_decoder))
        self.blocks = Transformer(ModelConfig(d_model=d_decoder, n_layers=n_layers, n_heads=n_heads))
        self.out = nn.Linear(d_decoder, patch * n_channels)

    def forward(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """latent (B, 1 + V, d_model) CLS + visible patches in patch order; mask (B, P) bool, True =
        masked, V False per row -> (B, P, patch * C)."""
        h = self.proj(latent)
        cls, visible = h[:, :1], h[:, 1:]
        B, P = mask.shape
        # masked_scatter fills the unmasked places in row-major order, the order of `visible`
        full = torch.zeros(B, P, h.shape[2], dtype=h.dtype, device=h.device).masked_scatter(~mask[..., None], visible)
        full = torch.where(mask[..., None], self.mask_token, full) + self.pos[:, :P]
        h = torch.cat([cls, full], dim=1)
        h = self.blocks(h, torch.ones(h.shape[:2], dtype=torch.bool, device=h.device))
        return self.out(h[:, 1:])


def random_patch_mask(batch: int, n_patches: int, mask_ratio: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, n_patches) bool, True = masked: round(mask_ratio * n_patches) random patches of each
    row, at least one. The same count in every row keeps the visible tokens a dense (B, V, d) batch."""
    if not 0 < mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    n_mask = min(n_patches, max(1, round(mask_ratio * n_patches)))
    rank = torch.rand(batch, n_patches, generator=generator).argsort(dim=1).argsort(dim=1)
    return rank < n_mask


def mae_loss(model: PatchTransformer, decoder: nn.Module, x: torch.Tensor, mask_ratio: float = 0.5,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean squared error of `decoder`'s reconstruction over the masked patches only.

    The encoder sees only the visible patches (CLS included, so even a fully masked window
    works); the mask comes from `random_patch_mask(B, P, mask_ratio, generator)`.
    """
    patches = model.patchify(x)
    B, P, D = patches.shape
    mask = random_patch_mask(B, P, mask_ratio, generator).to(x.device)
    visible = model.tokens(patches)[~mask].view(B, -1, model.feature_dim)
    pred = decoder(model.encode(visible), mask)
    per_patch = ((pred - patches) ** 2).mean(dim=2)
    return (per_patch * mask).sum() / mask.sum()


# ---------------------------------------------------------------- SimCLR

def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random view of each (B, T, C) window, same shape and dtype, for contrastive learning.

    Per window: a circular time shift of up to T // 4 samples (gestures are held, so where the
    window starts is arbitrary), a per-channel gain log-uniform in [0.7, 1.4] (electrode contact
    and skin impedance), Gaussian noise of std 0.05 (amplifier noise on unit-scale data), and,
    with probability 0.5, one channel zeroed (a lifted electrode). `generator` must live on x's device.
    """
    B, T, C = x.shape
    opts = dict(generator=generator, device=x.device)
    max_shift = T // 4
    shift = torch.randint(-max_shift, max_shift + 1, (B, 1), **opts)
    index = (torch.arange(T, device=x.device) + shift) % T  # (B, T)
    view = x.gather(1, index[..., None].expand(B, T, C))
    gain = torch.empty(B, 1, C, dtype=x.dtype, device=x.device).uniform_(math.log(0.7), math.log(1.4),
                                                                        generator=generator).exp()
    view = view * gain + 0.05 * torch.randn(B, T, C, dtype=x.dtype, **opts)
    dropped = F.one_hot(torch.randint(C, (B,), **opts), C) * (torch.rand(B, 1, **opts) < 0.5)
    return view * (1 - dropped.to(x.dtype))[:, None, :]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2B views must pick its partner among the other 2B - 1 by cosine
    similarity / temperature; mean cross entropy over the 2B views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(z.shape[0], dtype=torch.bool, device=z.device), float("-inf"))
    B = z1.shape[0]
    partner = torch.cat([torch.arange(B, 2 * B), torch.arange(B)]).to(z.device)
    return F.cross_entropy(sim, partner)


class ProjectionHead(nn.Module):
    """feature_dim -> hidden -> GELU -> out: SimCLR's MLP; the contrastive loss reads its output,
    so the features below it keep what the augmentations would otherwise make it discard."""

    def __init__(self, feature_dim: int, hidden: int = 128, out: int = 128):
        super().__init__()
        self.fc = nn.Linear(feature_dim, hidden)
        self.proj = nn.Linear(hidden, out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(h)))


# ---------------------------------------------------------------- pretraining drivers

def _pretrain(encoder: nn.Module, aux: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray,
              steps: int, batch_size: int, lr: float, seed: int) -> list[float]:
    """The shared loop: AdamW over encoder + aux, 5 % linear warmup, cosine decay to 0.1 lr, grad clip
    1.0; batches of `x` drawn by a numpy Generator(seed), with replacement when x is smaller than one."""
    if x.ndim != 3 or len(x) == 0:
        raise ValueError(f"x must be non-empty (N, T, C) windows, got shape {x.shape}")
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1")
    rng = np.random.default_rng(seed)
    params = list(encoder.parameters()) + list(aux.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr)
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    was_training = encoder.training
    encoder.train()
    aux.train()
    losses = []
    for _ in range(steps):
        idx = rng.choice(len(x), size=batch_size, replace=len(x) < batch_size)
        batch = torch.from_numpy(np.asarray(x[idx], dtype=np.float32))  # fancy indexing copies: writable
        loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    encoder.train(was_training)
    return losses


def pretrain_simclr(encoder: RawCNN, x: np.ndarray, steps: int = 300, batch_size: int = 128, lr: float = 1e-3,
                    seed: int = 0) -> list[float]:
    """SimCLR on unlabeled windows x (N, T, C): trains `encoder` in place, returns the loss per step.

    Both views of a batch go through the encoder as one batch of 2B (GroupNorm makes that the same
    as two passes). The projection head is discarded at the end.
    """
    torch.manual_seed(seed)
    head = ProjectionHead(encoder.feature_dim)
    generator = torch.Generator().manual_seed(seed)

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        views = torch.cat([augment(batch, generator), augment(batch, generator)])
        z1, z2 = head(encoder.features(views)).chunk(2)
        return nt_xent(z1, z2)

    return _pretrain(encoder, head, loss_fn, x, steps, batch_size, lr, seed)


def pretrain_mae(encoder: PatchTransformer, x: np.ndarray, steps: int = 300, batch_size: int = 128,
                 lr: float = 1e-3, mask_ratio: float = 0.5, seed: int = 0) -> list[float]:
    """MAE on unlabeled windows x (N, T, C): trains `encoder` in place, returns the loss per step.
    The decoder is discarded at the end."""
    torch.manual_seed(seed)
    decoder = MAEDecoder(encoder.feature_dim, encoder.patch, encoder.n_channels, encoder.max_patches)
    generator = torch.Generator().manual_seed(seed)
    return _pretrain(encoder, decoder, lambda batch: mae_loss(encoder, decoder, batch, mask_ratio, generator),
                     x, steps, batch_size, lr, seed)
