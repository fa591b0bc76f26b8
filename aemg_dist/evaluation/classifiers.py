"""Supervised training shared by every neural method, and the linear probe.

Calibration protocol (the same for every method): a classifier first learns from the other
subjects' labeled windows ("source"); budget 0 % scores that model on the held-out subject. For a
budget b > 0 the held-out subject's calibration windows join the source windows and make up
`calib_share` of what the classifier learns from: a neural model continues from its source model
on batches with that share of calibration windows; LDA and the linear probe are refit with the
calibration windows weighted to that share of the total weight. Without the weighting 1 % of one
subject would be drowned by the other subjects' windows.

How long a neural model adapts (`adaptation_steps`, `early_stopped_steps`): `adapt_steps` steps at
every budget by default; with `adapt_epochs` the steps scale with the number of calibration windows
(11 windows get fewer steps than 3,000); with `adapt_check` the step count is chosen per (method,
budget, seed) on a slice of the calibration windows held back from a first adaptation (`check_split`),
then the model adapts on every calibration window for that many steps. Nothing of the test windows
takes part in either choice.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from aemg_dist.config import check_ranges
from aemg_dist.model import AEMGModel


@dataclass
class FinetuneConfig:
    """How every neural classifier is trained (AEMG fine-tuning, from scratch, CNN, Transformer, ...)."""

    base_steps: int = 300  # on the other subjects' windows
    # per method, its own number of steps on the other subjects' windows instead of base_steps (chosen on development
    # folds by that method's own accuracy), e.g. train.source_steps.aemg_scratch=3000
    source_steps: dict[str, int] = field(default_factory=dict)
    adapt_steps: int = 100  # per calibration budget, continuing from the source model (the most, with adapt_epochs)
    batch_size: int = 64
    lr: float = 1e-3
    adapt_lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    calib_share: float = 0.5  # share of calibration windows in adaptation batches / LDA and probe weights
    probe_l2: float = 1e-3  # ridge of the linear probe (logistic regression on standardized features)
    probe_init: bool = True  # aemg_finetune: start the head from the linear probe (LP-FT) instead of random
    # aemg_probe's frozen features: "layers" (the mean and std over the window of every block's output) or "window"
    # (the pooled output the fine-tuned head reads; the only choice before, 0.11-0.13 lower on the development
    # subjects at 100 %, benchmarks/RESULTS.md)
    probe_features: str = "layers"
    # what the head of aemg_finetune and aemg_scratch reads, the same choices; LP-FT fits its probe on these
    head_features: str = "window"
    # aemg_finetune: layer-wise learning-rate decay, lr x layer_decay^depth from the head down (1 = one rate). The
    # pretrained layers near the input change least; a model from scratch always trains with one rate
    layer_decay: float = 1.0
    pretrain_steps: int = 300  # SimCLR / MAE pretraining on the fold's unlabeled training windows
    # adapt_epochs > 0: adaptation steps scale with the calibration size, this many passes over the calibration
    # windows (a batch holds calib_share x batch_size of them) clipped to [adapt_min_steps, adapt_steps];
    # 0: every budget adapts for adapt_steps steps
    adapt_epochs: float = 0.0
    adapt_min_steps: int = 10
    # adapt_check > 0: early stopping. That share of each label's calibration windows (its last in time) is held back,
    # the model adapts on the rest while the held-back windows are scored every adapt_check_every steps, and the step
    # count that scores best there (0 included) is how long it then adapts on every window. adapt_check_by: "loss"
    # (the least class-balanced cross-entropy) or "accuracy" (the highest balanced accuracy, ties to the lower loss)
    adapt_check: float = 0.0
    adapt_check_every: int = 10
    adapt_check_by: str = "loss"
    # aemg_finetune and aemg_scratch: every training batch (source and calibration) is a view changed as between users
    # (model/augment.py with the model's view settings: a gain per channel, a turned layout, dropped tokens, noise);
    # scoring and prediction read the windows unchanged
    augment: bool = False

    def __post_init__(self) -> None:
        check_ranges(self, base_steps="[1, inf)", adapt_steps="[0, inf)", batch_size="[1, 65536]", lr="(0, 1]",
                     adapt_lr="(0, 1]", weight_decay="[0, inf)", warmup_fraction="[0, 1]", calib_share="(0, 1]",
                     probe_l2="[0, inf)", layer_decay="(0, 1]", pretrain_steps="[1, inf)", adapt_epochs="[0, inf)",
                     adapt_min_steps="[0, inf)", adapt_check="[0, 1)", adapt_check_every="[1, inf)")
        bad = {method: steps for method, steps in self.source_steps.items() if steps < 1}
        if bad:
            raise ValueError(f"source_steps must be at least 1, got {bad}")
        for name, allowed in (("adapt_check_by", CHECK_CRITERIA), ("probe_features", FEATURE_READS),
                              ("head_features", FEATURE_READS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


CHECK_CRITERIA = ("loss", "accuracy")
FEATURE_READS = ("window", "layers")


def read_features(backbone: AEMGModel, batch: dict[str, torch.Tensor], reads: str) -> torch.Tensor:
    """What a probe or a head reads of the encoder (`FEATURE_READS`): "window", the pooled output (B, d_model);
    "layers", every block's mean and std over the window (B, 2 * n_layers * d_model)."""
    return backbone.layer_summary(batch) if reads == "layers" else backbone.encode(batch)[0]


def source_steps(method: str, cfg: FinetuneConfig) -> int:
    """How many steps `method` trains on the other subjects' windows."""
    return cfg.source_steps.get(method, cfg.base_steps)


def adaptation_steps(n_calib: int, cfg: FinetuneConfig) -> int:
    """Steps of adaptation to n_calib calibration windows (before any early stopping)."""
    if cfg.adapt_epochs == 0:
        return cfg.adapt_steps
    per_batch = max(1, round(cfg.calib_share * cfg.batch_size))
    steps = round(cfg.adapt_epochs * n_calib / per_batch)
    return int(np.clip(steps, min(cfg.adapt_min_steps, cfg.adapt_steps), cfg.adapt_steps))


def check_split(label: np.ndarray, key: np.ndarray, start: np.ndarray, stop: np.ndarray,
                share: float) -> tuple[np.ndarray, np.ndarray]:
    """(fit, check): positions of calibration windows to adapt on / to choose the step count on.

    Per label, the last round(share x n) windows in (recording, time) order are held back (at least one when the
    label has two or more), and the label's other windows that share a sample with a held-back one are dropped, so
    the check windows never overlap what the model adapts on. A label that would keep no fit window holds nothing
    back: every class stays in the adaptation data.
    """
    fit, check = [], []
    for lab in np.unique(label):
        rows = np.flatnonzero(label == lab)
        rows = rows[np.lexsort((start[rows], key[rows]))]
        n_check = max(1, round(share * rows.size)) if rows.size > 1 else 0
        held, rest = rows[rows.size - n_check:], rows[:rows.size - n_check]
        overlaps = ((key[rest, None] == key[None, held]) & (start[rest, None] < stop[None, held])
                    & (stop[rest, None] > start[None, held])).any(axis=1)
        if n_check and not overlaps.all():
            fit.append(rest[~overlaps])
            check.append(held)
        else:
            fit.append(rows)
    empty = np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(check)) if check else empty


Inputs = Callable[[np.ndarray], Any]  # row indices -> the model's input for those windows


def calibration_weights(n_source: int, n_calib: int, share: float) -> np.ndarray:
    """Weights of [source rows, calibration rows] so the calibration rows hold `share` of the total."""
    weights = np.ones(n_source + n_calib)
    if n_calib and n_source:
        weights[n_source:] = share / (1 - share) * n_source / n_calib if share < 1 else 1.0
        if share == 1:  # calibration only; the source rows keep a vanishing weight so every class stays
            weights[:n_source] = 1e-6 * n_calib / n_source  # defined for LDA (positive weights, all classes)
    return weights


def _batch_indices(rng: np.random.Generator, source: np.ndarray, calib: np.ndarray, size: int,
                   share: float) -> np.ndarray:
    n_calib = int(round(share * size)) if calib.size else 0
    parts = [rng.choice(calib, n_calib)] if n_calib else []
    if size - n_calib:
        parts.append(rng.choice(source, size - n_calib))
    return np.concatenate(parts)


def train_classifier(model: nn.Module, inputs: Inputs, y: np.ndarray, source: np.ndarray, calib: np.ndarray,
                     steps: int, lr: float, cfg: FinetuneConfig, seed: int, layer_decay: float = 1.0,
                     after_step: Callable[[int, nn.Module], None] | None = None,
                     augment: Callable[[Any], Any] | None = None) -> list[float]:
    """Train `model` (inputs -> logits) in place with AdamW, warmup + cosine; returns the step losses.

    Batches draw `calib_share` of their windows from `calib` (with replacement) when it is not
    empty, the rest from `source`; the draws depend only on `seed`. With layer_decay < 1 and a model
    that has `layer_groups`, each depth gets lr x layer_decay^depth. `after_step(n, model)` is called
    after step n (1-based). `augment` changes each batch's input before the model reads it (torch's
    generator, seeded by `seed`, draws the change).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    groups = model.layer_groups() if layer_decay < 1 and hasattr(model, "layer_groups") else [list(model.parameters())]
    param_groups = [{"params": [p for p in group if p.requires_grad], "lr": lr * layer_decay ** depth}
                    for depth, group in enumerate(groups)]
    params = [p for g in param_groups for p in g["params"]]
    optimizer = torch.optim.AdamW([g for g in param_groups if g["params"]], lr=lr, weight_decay=cfg.weight_decay)
    warmup = max(1, int(cfg.warmup_fraction * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / max(steps, 1)))))
    labels = torch.as_tensor(y, dtype=torch.long)
    model.train()
    losses = []
    for _ in range(steps):
        idx = _batch_indices(rng, source, calib, cfg.batch_size, cfg.calib_share)
        batch = inputs(idx)
        loss = F.cross_entropy(model(batch if augment is None else augment(batch)), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if after_step is not None:
            after_step(len(losses), model)
    return losses


def check_score(model: nn.Module, inputs: Inputs, y: np.ndarray, idx: np.ndarray, by: str) -> tuple[float, ...]:
    """How badly `model` does on windows idx, lower is better: (balanced cross-entropy,) for by="loss",
    (-balanced accuracy, balanced cross-entropy) for by="accuracy". Eval mode; the mode is restored."""
    was_training = model.training
    model.eval()
    logits = torch.as_tensor(apply_in_batches(model, inputs, idx))
    model.train(was_training)
    labels = y[idx]
    losses = F.cross_entropy(logits, torch.as_tensor(labels, dtype=torch.long), reduction="none").numpy()
    correct = (logits.argmax(dim=1).numpy() == labels)
    classes = [labels == lab for lab in np.unique(labels)]
    loss = float(np.mean([losses[c].mean() for c in classes]))
    return (loss,) if by == "loss" else (-float(np.mean([correct[c].mean() for c in classes])), loss)


def early_stopped_steps(model: nn.Module, inputs: Inputs, y: np.ndarray, source: np.ndarray, fit: np.ndarray,
                        check: np.ndarray, steps: int, lr: float, cfg: FinetuneConfig, seed: int,
                        layer_decay: float = 1.0, augment: Callable[[Any], Any] | None = None) -> int:
    """Adapt `model` (a copy the caller discards) on `fit` for `steps` steps, scoring `check` before the first step
    and every `adapt_check_every` steps; the step count that scores best by `adapt_check_by` (the earliest of ties)."""
    scores = {0: check_score(model, inputs, y, check, cfg.adapt_check_by)}

    def score(step: int, trained: nn.Module) -> None:
        if step % cfg.adapt_check_every == 0 or step == steps:
            scores[step] = check_score(trained, inputs, y, check, cfg.adapt_check_by)

    train_classifier(model, inputs, y, source, fit, steps, lr, cfg, seed, layer_decay, after_step=score,
                     augment=augment)
    return min(scores, key=lambda step: (*scores[step], step))


@torch.no_grad()
def apply_in_batches(fn: Callable[[Any], torch.Tensor], inputs: Inputs, idx: np.ndarray,
                     batch_size: int = 512) -> np.ndarray:
    """fn(inputs(chunk)) over idx in chunks, concatenated as a numpy array (eval mode is the caller's)."""
    outs = [fn(inputs(idx[i:i + batch_size])).float().cpu().numpy() for i in range(0, idx.size, batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0,))


def predict(model: nn.Module, inputs: Inputs, idx: np.ndarray) -> np.ndarray:
    model.eval()
    return apply_in_batches(model, inputs, idx).argmax(axis=1)


def adapted_copy(model: nn.Module) -> nn.Module:
    """An independent copy of a source model, to adapt to one (budget, seed) without touching it."""
    return copy.deepcopy(model)


class LinearProbe:
    """Multinomial logistic regression on standardized features, fitted by L-BFGS with an L2 ridge."""

    def __init__(self, l2: float = 1e-3, max_iter: int = 200):
        self.l2, self.max_iter = l2, max_iter

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int, sample_weight: np.ndarray | None = None) -> "LinearProbe":
        X = np.asarray(X, dtype=np.float64)
        self.mean_, self.scale_ = X.mean(axis=0), X.std(axis=0) + 1e-6
        x = torch.as_tensor((X - self.mean_) / self.scale_)
        target = torch.as_tensor(y, dtype=torch.long)
        w = torch.as_tensor(np.ones(len(y)) if sample_weight is None else sample_weight, dtype=torch.float64)
        w = w / w.sum()
        weight = torch.zeros(X.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = (F.cross_entropy(x @ weight + bias, target, reduction="none") * w).sum() \
                + self.l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.weight_, self.bias_ = weight.detach().numpy(), bias.detach().numpy()
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.argmax((np.asarray(X) - self.mean_) / self.scale_ @ self.weight_ + self.bias_, axis=1)


class AEMGClassifier(nn.Module):
    """The AEMG encoder (token embedding + Transformer; pooled window output) with a linear head."""

    def __init__(self, backbone: AEMGModel, n_classes: int, features: str = "window"):
        super().__init__()
        self.backbone, self.reads = backbone, features
        # the pretraining objective may have frozen parts (two-stage training): fine-tuning trains them all
        for part in (backbone.embed, backbone.encoder):
            part.requires_grad_(True)
        backbone.tokenizer.requires_grad_(False)  # not on the classification path
        for head in (backbone.head, backbone.feature_head, backbone.projection):  # pretraining heads
            if head is not None:
                head.requires_grad_(False)
        width = backbone.cfg.d_model * (2 * backbone.cfg.n_layers if features == "layers" else 1)
        self.head = nn.Linear(width, n_classes)

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return read_features(self.backbone, batch, self.reads)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters from the output down: head and final norm, each block from the top, then the embeddings."""
        encoder = self.backbone.encoder
        blocks = [list(block.parameters()) for block in reversed(encoder.blocks)]
        return [[*self.head.parameters(), *encoder.ln_f.parameters()], *blocks, list(self.backbone.embed.parameters())]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(batch))
