"""Views of a token batch that change what differs between users, not what the gesture is.

`augment` draws, per window, what a new user or a re-donned armband changes:

- a gain per channel (skin impedance, electrode contact, fat): log-normal, added to the token
  features that are log amplitudes (`gain_features`: log_peak, log_rms, log_snr of the default
  tokenizer); shapes and spectra are scale-free and stay;
- a rotation of the whole electrode layout around the forearm (the band put on a little turned):
  the (cos, sin) of every electrode's angle rotated by one angle per window;
- a share of the tokens dropped (a channel that did not cross the threshold this time);
- small noise on every feature.

The view-consistency objective (objectives.py, `contrast_weight`) asks the pooled window outputs of
two such views of a window to be closer to each other than to the other windows of the batch
(InfoNCE): the features that survive are the ones a linear probe can use on a user never seen.
"""

from __future__ import annotations

import torch


def augment(batch: dict[str, torch.Tensor], gain_features: list[int], gain_std: float, rotation: float,
            drop: float, noise: float, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A randomly changed copy of a `batch_to_torch` batch (the input is not modified)."""
    features, mask = batch["features"], batch["mask"]
    n_windows, n_slots = mask.shape
    device = features.device

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device)

    n_channels = int(batch["channel"].max()) + 1 if batch["channel"].numel() else 1
    log_gain = (gain_std * normal(n_windows, n_channels)).gather(1, batch["channel"])  # (B, T)
    changed = features + noise * normal(*features.shape)
    if gain_features:
        changed[..., gain_features] += log_gain[..., None]
    angle = (2 * uniform(n_windows) - 1) * rotation
    cos, sin = angle.cos()[:, None], angle.sin()[:, None]
    coords = batch["coords"].clone()
    coords[..., 0] = cos * batch["coords"][..., 0] - sin * batch["coords"][..., 1]
    coords[..., 1] = sin * batch["coords"][..., 0] + cos * batch["coords"][..., 1]
    keep = mask & (uniform(n_windows, n_slots) >= drop)
    return {**batch, "features": changed.masked_fill(~keep[..., None], 0.0), "coords": coords, "mask": keep}


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of two (B, D) batches of embeddings where row i of a and of b are views of one window."""
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target))
