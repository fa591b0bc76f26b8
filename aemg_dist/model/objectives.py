"""The pretraining objectives and the model that carries them.

(a) VQ reconstruction. A per-token tokenizer maps each token's features to one of K contraction
    prototypes: MLP encoder -> cosine EMA codebook (quantizer.py) -> MLP decoder -> features, with
    MSE on real tokens, the commitment loss and the straight-through estimator. The tokenizer
    sees one token at a time, not the Transformer's contextual output, because:
    - a code then names what one contraction looked like (envelope shape, amplitude, spectrum),
      the same prototype whatever the layout or the neighbouring channels did;
    - the targets of (b) are the codes of the *unmasked* tokens: with a per-token tokenizer they
      cost one cheap MLP pass over the batch; with the Transformer as VQ encoder every step would
      need a second, unmasked Transformer pass, and the target of a masked token would depend on
      the very context the model predicts it from;
    - two-stage training freezes a small network, and stage 1 never runs the Transformer.
(b) Masked token modeling. A ratio r of each window's real tokens (or of its groups) is masked:
    their content embedding becomes a learned [MASK] vector and their active flag is hidden, while
    their spatial, temporal, order and group conditioning stays, so the model knows where and when
    to predict. The Transformer predicts the masked tokens' codebook indices (cross-entropy); the
    targets are integer codes, so no gradient of (b) reaches the tokenizer. With `feature_weight`
    > 0 it also regresses the masked tokens' features themselves (MSE, a second linear head): a
    target that does not move with the codebook and keeps the detail a code rounds away.

(c) View consistency (optional, `contrast_weight`): two views of each window with what differs
    between users changed (channel gains, a turned layout, dropped tokens; augment.py) are encoded
    without masking, and InfoNCE pulls the pooled outputs of the two views of a window together and
    apart from the other windows: pooled features a linear probe can separate on unseen users.

The objective (ModelConfig.objective) picks what trains: "joint" sums both losses (their parameter
sets are disjoint, so this is both stages at once with moving targets); "tokenizer" (stage 1) trains
the tokenizer only; "masked" (stage 2) freezes the tokenizer and its codebook and trains the rest.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import augment, info_nce
from .embeddings import TokenEmbedding
from .quantizer import Quantized, VectorQuantizer
from .transformer import MLP, ModelConfig, Transformer


def masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `weight` (same shape, bool or float) is set; 0 (still in the graph) when nothing is."""
    weight = weight.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def mask_tokens(real: torch.Tensor, units: torch.Tensor, ratio: float,
                generator: torch.Generator | None = None, n_units: int | None = None) -> torch.Tensor:
    """Choose the masked tokens: round(ratio * n), at least one, of the n units present in each row.

    real: (B, T) bool, True = real token. units: (B, T) long >= 0, the unit each token belongs to:
    its position for token masking, its group index for whole-group masking. Units are drawn
    uniformly without replacement using `generator` (on the batch's device) or, when it is None,
    the global torch RNG, so torch.manual_seed makes the masks reproducible. Returns (B, T) bool;
    padding is never masked. n_units: 1 + the largest unit index in `units` when the caller knows it (token
    positions: T), else read from `units` (a host sync on a GPU); the draws depend on it.
    """
    if n_units is None:
        n_units = int(units.max()) + 1
    slot = torch.where(real, units, n_units)  # padding lands in an extra slot, dropped below
    present = torch.zeros(real.shape[0], n_units + 1, dtype=torch.bool, device=real.device)
    present = present.scatter_(1, slot, True)[:, :n_units]
    scores = torch.rand(present.shape, generator=generator, device=real.device).masked_fill(~present, 2.0)
    order = scores.argsort(dim=1).argsort(dim=1)  # each unit's place in a random order; absent units last
    n_masked = torch.round(ratio * present.sum(dim=1)).clamp_min(1)
    chosen = order < n_masked[:, None]
    return chosen.gather(1, units) & real


class Tokenizer(nn.Module):
    """Per-token VQ tokenizer: features (..., F) -> codes (...), and a reconstruction of the features."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.encoder = MLP(cfg.n_features, cfg.tokenizer_hidden, cfg.codebook_dim)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.codebook_dim, cfg.ema_decay, cfg.dead_code_steps,
                                         cfg.kmeans_iters)
        self.decoder = MLP(cfg.codebook_dim, cfg.tokenizer_hidden, cfg.n_features)

    def forward(self, features: torch.Tensor, real: torch.Tensor,
                update: bool = True) -> tuple[Quantized, torch.Tensor]:
        """-> (quantizer output, reconstruction MSE averaged over the real tokens)."""
        q = self.quantizer(self.encoder(features), real, update)
        error = (self.decoder(q.quantized) - features).pow(2).mean(dim=-1)
        return q, masked_mean(error, real)


class AEMGModel(nn.Module):
    """Tokenizer + token embedding + Transformer encoder + masked-token head.

    Input everywhere: the dict of `batch_to_torch`. `forward` computes the pretraining losses,
    `encode` the representations used by evaluation (linear probe, fine-tuning).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = Tokenizer(cfg)
        self.embed = TokenEmbedding(cfg)
        self.encoder = Transformer(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.codebook_size)  # logits over the codebook
        self.feature_head = nn.Linear(cfg.d_model, cfg.n_features) if cfg.feature_weight > 0 else None
        self.projection = MLP(cfg.d_model, cfg.d_model, cfg.d_model) if cfg.contrast_weight > 0 else None
        # nanoGPT's init for the residual stream; the tokenizer keeps PyTorch's fan-in init, because
        # std 0.02 would make its encoder outputs tiny and their l2 normalization would amplify the gradients
        for part in self._context_parts():
            part.apply(_init_weights)
        for name, p in self.encoder.named_parameters():
            if name.endswith("proj.weight"):  # projections into the residual stream, scaled per GPT-2
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        self.tokenizer.requires_grad_(cfg.objective != "masked")
        for part in self._context_parts():
            part.requires_grad_(cfg.objective != "tokenizer")

    def _context_parts(self) -> list[nn.Module]:
        """What masked token modeling trains: embeddings, Transformer and its prediction heads."""
        return [self.embed, self.encoder, self.head] + [m for m in (self.feature_head, self.projection) if m is not None]

    def forward(self, batch: dict[str, torch.Tensor],
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Pretraining losses of one batch: {"loss": scalar to backpropagate, parts and metrics (detached)}.

        loss = recon_weight * recon_loss + commitment * commit_loss   (objectives joint, tokenizer)
             + mtm_weight * mtm_loss                                   (objectives joint, masked)
             + feature_weight * feature_loss                           (when feature_weight > 0)
             + contrast_weight * contrast_loss                         (when contrast_weight > 0)
        Always present: recon_loss, commit_loss (in stage 2 they monitor the frozen tokenizer),
        codebook_usage and perplexity (of this batch's codes), ema_perplexity (of the codebook's
        EMA counts). With masked token modeling: mtm_loss, mtm_accuracy, mask_fraction (and
        feature_loss with feature regression).
        In training mode (and unless the objective is "masked") the codebook buffers are updated.
        Masks are drawn from `generator`, or from the global torch RNG when it is None.
        """
        cfg, real = self.cfg, batch["mask"]
        trains_tokenizer = cfg.objective != "masked"
        with torch.set_grad_enabled(trains_tokenizer and torch.is_grad_enabled()):
            q, recon_loss = self.tokenizer(batch["features"], real, update=trains_tokenizer)
        commit_loss = masked_mean(q.commit, real)
        parts = {"recon_loss": recon_loss, "commit_loss": commit_loss, "codebook_usage": q.usage,
                 "perplexity": q.perplexity, "ema_perplexity": q.ema_perplexity}
        loss = cfg.recon_weight * recon_loss + cfg.commitment * commit_loss if trains_tokenizer else 0.0
        if cfg.objective != "tokenizer":
            parts.update(self._masked_token_modeling(batch, q.codes, generator))
            loss = loss + cfg.mtm_weight * parts["mtm_loss"]
            if self.feature_head is not None:
                loss = loss + cfg.feature_weight * parts["feature_loss"]
            if self.projection is not None:
                parts["contrast_loss"] = self._view_consistency(batch, generator)
                loss = loss + cfg.contrast_weight * parts["contrast_loss"]
        return {"loss": loss, **{name: value.detach() for name, value in parts.items()}}

    def _masked_token_modeling(self, batch: dict[str, torch.Tensor], targets: torch.Tensor,
                               generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Mask tokens (or groups), encode the window, score the predicted codes of the masked tokens."""
        real = batch["mask"]
        positions = torch.arange(real.shape[1], device=real.device).expand_as(real)
        if self.cfg.mask_whole_groups:
            masked = mask_tokens(real, batch["group"], self.cfg.mask_ratio, generator)
        else:  # every position of the padded window is a unit: n_units is known without reading the batch
            masked = mask_tokens(real, positions, self.cfg.mask_ratio, generator, n_units=real.shape[1])
        hidden = self.encoder(*self.embed(batch, masked))[:, 1:]  # (B, T, d_model), window token dropped
        logits = self.head(hidden)  # (B, T, K)
        # the targets are integer codes: no gradient of this loss can reach the tokenizer
        loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        hit = (logits.argmax(dim=-1) == targets).float()
        out = {"mtm_loss": masked_mean(loss, masked), "mtm_accuracy": masked_mean(hit, masked),
               "mask_fraction": masked.sum() / real.sum().clamp_min(1)}
        if self.feature_head is not None:
            error = (self.feature_head(hidden) - batch["features"]).pow(2).mean(dim=-1)
            out["feature_loss"] = masked_mean(error, masked)
        return out

    def _view_consistency(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None) -> torch.Tensor:
        cfg = self.cfg
        views = [augment(batch, cfg.gain_features, cfg.augment_gain_std, cfg.augment_rotation, cfg.augment_drop,
                         cfg.augment_noise, generator) for _ in range(2)]
        first, second = (self.projection(self.encode(view)[0]) for view in views)
        return info_nce(first, second, cfg.contrast_temperature)

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unmasked forward -> (window (B, d_model), tokens (B, T, d_model)).

        window: mean of the outputs at the window token and the real tokens (for an empty window,
        the window token's alone). tokens: the outputs at the T token slots; padding slots hold
        meaningless values, select with batch["mask"].
        """
        x, key_mask = self.embed(batch)
        h = self.encoder(x, key_mask)
        weight = key_mask[..., None].to(h.dtype)
        return (h * weight).sum(dim=1) / weight.sum(dim=1), h[:, 1:]

    def layer_summary(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unmasked forward -> (B, 2 * n_layers * d_model): per block, the mean and the std of its output over the
        window token and the real tokens (the last block's mean is encode's window). Frozen features that keep
        what the earlier layers and the spread over the window know, for a probe."""
        x, key_mask = self.embed(batch)
        weight = key_mask[..., None].to(x.dtype)
        count = weight.sum(dim=1)
        stats = []
        for h in self.encoder.layers(x, key_mask):
            mean = (h * weight).sum(dim=1) / count
            stats += [mean, (((h - mean[:, None]) ** 2 * weight).sum(dim=1) / count).sqrt()]
        return torch.cat(stats, dim=1)

    def lookup_parameters(self) -> list[nn.Parameter]:
        """Parameters read by index rather than multiplied: embedding tables, the [MASK] and window vectors."""
        tables = [m.weight for m in self.modules() if isinstance(m, nn.Embedding)]
        return tables + [self.embed.mask_token, self.embed.window_token]

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Trainable parameters as AdamW groups: decay on the weight matrices, none on biases, LayerNorms
        and lookups (a rarely used rank or group embedding would otherwise shrink between its uses)."""
        lookups = {id(p) for p in self.lookup_parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in trainable if p.dim() >= 2 and id(p) not in lookups]
        no_decay = [p for p in trainable if p.dim() < 2 or id(p) in lookups]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    elif isinstance(module, TokenEmbedding):
        nn.init.normal_(module.mask_token, mean=0.0, std=0.02)
        nn.init.normal_(module.window_token, mean=0.0, std=0.02)


def param_count(cfg: ModelConfig, non_embedding: bool = False) -> int:
    """Parameters of AEMGModel(cfg), built on the meta device (no memory, even for xl).

    non_embedding: leave out the lookups (`AEMGModel.lookup_parameters`), as scaling laws count N.
    """
    with torch.device("meta"):
        model = AEMGModel(cfg)
    total = sum(p.numel() for p in model.parameters())
    return total - sum(p.numel() for p in model.lookup_parameters()) if non_embedding else total


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Training FLOPs (forward + backward) per token for windows of seq_len tokens:

        6 * N + 12 * n_layers * d_model * (seq_len + 1)

    N = param_count(cfg, non_embedding=True): each parameter costs one multiply-add (2 FLOPs) per
    token in the forward pass and two in the backward (Kaplan et al. 2020). The second term is
    attention (PaLM, app. B): scores QK^T and the weighted sum AV cost 2 * 2 * d_model per layer
    for each of the seq_len + 1 positions a token attends to (the window token included), times
    3 for forward + backward. Left out: lookups and the codebook search (2 * K * codebook_dim per
    token, forward only). Counts every part as trained, as the joint objective does.
    """
    dense, attention = _flops_terms(cfg)
    return dense + attention * (seq_len + 1)


def training_flops(cfg: ModelConfig, window_lengths: np.ndarray) -> float:
    """Training FLOPs of one pass over windows of these token counts: sum over windows of
    length * flops_per_token(cfg, length), with N counted once (not per window)."""
    lengths = np.asarray(window_lengths, dtype=np.float64)
    dense, attention = _flops_terms(cfg)
    return float(dense * lengths.sum() + attention * (lengths * (lengths + 1)).sum())


def _flops_terms(cfg: ModelConfig) -> tuple[int, int]:
    """flops_per_token's two coefficients: 6 N per token, and the attention cost per attended position."""
    return 6 * param_count(cfg, non_embedding=True), 12 * cfg.n_layers * cfg.d_model
