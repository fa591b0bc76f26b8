"""The compared methods, each behind one small interface, on identical windows and folds.

    source_model(ctx)                 fit on the fold's source windows (the other subjects)
    calibrated(ctx, base, calib, s)   adapt to the held-out subject's calibration windows (seed s)
    predict(ctx, model, idx)          class indices of the windows idx

Methods (`METHODS`):
    aemg_finetune   the pretrained AEMG encoder + a linear head, trained end to end
    aemg_probe      the frozen pretrained encoder's pooled window features + a linear probe
    aemg_scratch    the same architecture as aemg_finetune from a random initialisation
    td_lda          MAV, RMS, WL, ZC, SSC per channel + LDA (Hudgins et al. 1993)
    cnn             a raw-signal 1D-CNN from scratch
    transformer     a supervised Transformer over raw-signal patches (sliding windows) from scratch
    simclr          the CNN pretrained by SimCLR on the fold's unlabeled training windows, fine-tuned
    mae             the patch Transformer pretrained as a masked autoencoder on the same windows, fine-tuned

SimCLR and MAE pretrain per fold on the windows of the fold's other subjects only (labels unused),
so, like AEMG under the default protocol, they never see the held-out subject before calibration.

Every input goes through the fold context: rows of the other subjects come from the stored windows,
rows of the held-out subject only from the context's current `HeldOutView` (heldout.py), which holds
them as its reference statistics made them. A method asking for held-out rows with no view raises, so
no method can read the held-out subject through the corpus's whole-recording statistics by accident.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from aemg_dist.evaluation.classifiers import (
    AEMGClassifier, FinetuneConfig, LinearProbe, adaptation_steps, adapted_copy, apply_in_batches,
    calibration_weights, check_split, early_stopped_steps, predict, read_features, source_steps, train_classifier)
from aemg_dist.evaluation.data import DatasetWindows
from aemg_dist.evaluation.folds import Fold
from aemg_dist.evaluation.heldout import HeldOutView
from aemg_dist.evaluation.td_lda import LDA, td_features
from aemg_dist.model import AEMGModel, ModelConfig, batch_to_torch, load_inference
from aemg_dist.model.augment import augment
from aemg_dist.tokens import TokenBatch, WindowTokens

AEMG_METHODS = ("aemg_finetune", "aemg_probe")  # need a pretrained checkpoint
BASELINE_METHODS = ("aemg_scratch", "td_lda", "cnn", "transformer", "simclr", "mae")


@dataclass
class FoldContext:
    """What a method may use for one fold: the dataset's windows, the fold, the training knobs and,
    for the AEMG methods, the pretrained checkpoint chosen for this fold."""

    data: DatasetWindows
    fold: Fold
    train: FinetuneConfig
    max_tokens: int
    model_config: ModelConfig  # architecture of aemg_scratch (the checkpoint's, when there is one)
    checkpoint: str = ""  # exported inference checkpoint folder
    view: HeldOutView | None = None  # the held-out windows as the current reference statistics made them
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> np.ndarray:
        return self.fold.train_idx

    def with_view(self, view: HeldOutView) -> "FoldContext":
        """The same fold (and cache) with the held-out windows of `view`."""
        return replace(self, view=view)

    @property
    def n_classes(self) -> int:
        return int(self.data.class_labels.size)

    def seed(self, method: str, *parts: Any) -> int:
        """A training seed that depends only on (method, dataset, held-out subject, parts)."""
        return zlib.crc32("/".join(map(str, (method, self.data.dataset, self.fold.held_out, *parts))).encode())

    def _split(self, idx: np.ndarray) -> np.ndarray:
        """Which of idx are held-out rows; raises when there are some and no view to take them from."""
        heldout = np.isin(idx, self.fold.heldout_idx)
        if heldout.any() and self.view is None:
            raise RuntimeError(f"{self.data.dataset}/{self.fold.held_out}: held-out windows requested without a "
                               "held-out view (its statistics would come from the corpus)")
        return heldout

    def raw(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), T, C) float32 samples of windows idx (a copy)."""
        heldout = self._split(idx)
        out = self.data.raw[idx]  # fancy indexing copies: writable, never the cache itself
        if heldout.any():
            out[heldout] = self.view.raw[self.view.positions(idx[heldout])]
        return out

    def windows(self, idx: np.ndarray) -> list[WindowTokens]:
        """The tokens of windows idx."""
        heldout = self._split(idx)
        stored = self.data.tokens
        from_view = iter(self.view.windows(idx[heldout]) if heldout.any() else [])
        return [next(from_view) if h else stored[i] for i, h in zip(idx.tolist(), heldout.tolist())]

    def token_inputs(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        return batch_to_torch(TokenBatch.collate(self.windows(idx), max_tokens=self.max_tokens))

    def raw_inputs(self, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.raw(idx))

    def cached(self, name: str, compute: Callable[[np.ndarray], np.ndarray], idx: np.ndarray) -> np.ndarray:
        """compute(...) of windows idx, computed once for the source rows and once per view for the held-out rows."""
        source_key = f"{name}/source"
        if source_key not in self.cache:
            self.cache[source_key] = compute(self.source)
        heldout = np.isin(idx, self.fold.heldout_idx)
        if not heldout.any():
            return self.cache[source_key][np.searchsorted(self.source, idx)]
        self._split(idx)
        view_key = f"{name}/view"
        if self.cache.get(f"{view_key}/id") is not self.view:  # one view at a time: memory stays bounded
            self.cache[view_key], self.cache[f"{view_key}/id"] = compute(self.view.rows), self.view
        source_part = self.cache[source_key]
        out = np.empty((idx.size, *source_part.shape[1:]), dtype=source_part.dtype)
        out[~heldout] = source_part[np.searchsorted(self.source, idx[~heldout])]
        out[heldout] = self.cache[view_key][self.view.positions(idx[heldout])]
        return out

    def pretrained(self) -> AEMGModel:
        if not self.checkpoint:
            raise ValueError("AEMG methods need a pretrained checkpoint (aemg evaluate --checkpoint RUN)")
        return load_inference(self.checkpoint)


class Method(ABC):
    name: str = ""

    @abstractmethod
    def source_model(self, ctx: FoldContext) -> Any:
        raise NotImplementedError

    @abstractmethod
    def calibrated(self, ctx: FoldContext, base: Any, calib: np.ndarray, seed: int) -> Any:
        raise NotImplementedError

    @abstractmethod
    def predict(self, ctx: FoldContext, model: Any, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class FeatureMethod(Method):
    """Fixed features of every window + a linear classifier refit with weighted calibration windows."""

    @abstractmethod
    def features(self, ctx: FoldContext, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @abstractmethod
    def classifier(self, ctx: FoldContext, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None) -> Any:
        raise NotImplementedError

    def _features(self, ctx: FoldContext, idx: np.ndarray) -> np.ndarray:
        return ctx.cached(f"features/{self.name}", lambda rows: self.features(ctx, rows), idx)

    def source_model(self, ctx: FoldContext) -> Any:
        return self.classifier(ctx, self._features(ctx, ctx.source), ctx.data.y[ctx.source], None)

    def calibrated(self, ctx: FoldContext, base: Any, calib: np.ndarray, seed: int) -> Any:
        rows = np.concatenate([ctx.source, calib])
        weight = calibration_weights(ctx.source.size, calib.size, ctx.train.calib_share)
        return self.classifier(ctx, self._features(ctx, rows), ctx.data.y[rows], weight)

    def predict(self, ctx: FoldContext, model: Any, idx: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(self._features(ctx, idx)))


class TDLDA(FeatureMethod):
    name = "td_lda"

    def features(self, ctx: FoldContext, idx: np.ndarray) -> np.ndarray:
        # in chunks: td_features holds a few float64 copies of its input
        return np.concatenate([td_features(ctx.raw(idx[i:i + 2048])) for i in range(0, idx.size, 2048)])

    def classifier(self, ctx: FoldContext, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None) -> LDA:
        return LDA().fit(X, y, sample_weight=weight)


def pretrained_features(ctx: FoldContext, idx: np.ndarray, kind: str = "window") -> np.ndarray:
    """The frozen pretrained encoder's features of windows idx (once per fold, view and kind): "window", the pooled
    window output; "layers", every block's mean and std over the window (`AEMGModel.layer_summary`)."""
    def encode(rows: np.ndarray) -> np.ndarray:
        if "pretrained_model" not in ctx.cache:
            ctx.cache["pretrained_model"] = ctx.pretrained()
        model = ctx.cache["pretrained_model"]
        return apply_in_batches(lambda batch: read_features(model, batch, kind), ctx.token_inputs, rows)
    return ctx.cached(f"pretrained_features/{kind}", encode, idx)


class AEMGProbe(FeatureMethod):
    name = "aemg_probe"

    def features(self, ctx: FoldContext, idx: np.ndarray) -> np.ndarray:
        return pretrained_features(ctx, idx, ctx.train.probe_features)

    def classifier(self, ctx: FoldContext, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None) -> LinearProbe:
        return LinearProbe(l2=ctx.train.probe_l2).fit(X, y, ctx.n_classes, sample_weight=weight)


class NeuralMethod(Method):
    """A network trained on the source windows, then adapted per (budget, seed) from a copy."""

    @abstractmethod
    def build(self, ctx: FoldContext) -> nn.Module:
        raise NotImplementedError

    def inputs(self, ctx: FoldContext):
        return ctx.raw_inputs

    def layer_decay(self, ctx: FoldContext) -> float:
        """Learning-rate decay per depth (1: every layer at one rate); only pretrained layers get less."""
        return 1.0

    def augmentation(self, ctx: FoldContext) -> Callable[[Any], Any] | None:
        """What changes each training batch's input (None: nothing)."""
        return None

    def source_model(self, ctx: FoldContext) -> nn.Module:
        torch.manual_seed(ctx.seed(self.name, "init"))
        model = self.build(ctx)
        train_classifier(model, self.inputs(ctx), ctx.data.y, ctx.source, np.zeros(0, dtype=np.int64),
                         source_steps(self.name, ctx.train), ctx.train.lr, ctx.train, ctx.seed(self.name, "source"),
                         self.layer_decay(ctx), augment=self.augmentation(ctx))
        return model

    def calibrated(self, ctx: FoldContext, base: nn.Module, calib: np.ndarray, seed: int) -> nn.Module:
        """A copy of `base` adapted to `calib`; its `calibration_steps` says how many steps it adapted for."""
        cfg = ctx.train
        adapt = dict(inputs=self.inputs(ctx), y=ctx.data.y, source=ctx.source, lr=cfg.adapt_lr, cfg=cfg,
                     seed=ctx.seed(self.name, "calibrate", calib.size, seed), layer_decay=self.layer_decay(ctx),
                     augment=self.augmentation(ctx))
        steps = adaptation_steps(calib.size, cfg)
        if cfg.adapt_check and steps:
            data = ctx.data
            fit, check = check_split(data.y[calib], data.keys[calib], data.starts[calib], data.stops[calib],
                                     cfg.adapt_check)
            if check.size:
                steps = early_stopped_steps(adapted_copy(base), fit=calib[fit], check=calib[check], steps=steps,
                                            **adapt)
        model = adapted_copy(base)
        if steps:
            train_classifier(model, calib=calib, steps=steps, **adapt)
        model.calibration_steps = steps
        return model

    def predict(self, ctx: FoldContext, model: nn.Module, idx: np.ndarray) -> np.ndarray:
        return predict(model, self.inputs(ctx), idx)


class AEMGFinetune(NeuralMethod):
    """Fine-tuning after a linear probe (LP-FT, Kumar et al. 2022): the head starts from the probe fitted on
    the frozen features of the source windows, so the first gradients do not come from a random head and
    distort the pretrained features (measured on synthetic LOSO: fine-tuning from a random head scored below
    the frozen encoder's own probe)."""

    name = "aemg_finetune"

    def build(self, ctx: FoldContext) -> nn.Module:
        model = AEMGClassifier(ctx.pretrained().train(), ctx.n_classes, ctx.train.head_features)
        if ctx.train.probe_init:
            X = pretrained_features(ctx, ctx.source, ctx.train.head_features)
            probe = LinearProbe(l2=ctx.train.probe_l2).fit(X, ctx.data.y[ctx.source], ctx.n_classes)
            with torch.no_grad():  # the probe standardizes its input: fold that into the head's weights
                weight = probe.weight_ / probe.scale_[:, None]
                model.head.weight.copy_(torch.as_tensor(weight.T, dtype=torch.float32))
                model.head.bias.copy_(torch.as_tensor(probe.bias_ - probe.mean_ @ weight, dtype=torch.float32))
        return model

    def inputs(self, ctx: FoldContext):
        return ctx.token_inputs

    def layer_decay(self, ctx: FoldContext) -> float:
        return ctx.train.layer_decay

    def augmentation(self, ctx: FoldContext) -> Callable[[Any], Any] | None:
        """With train.augment, the views of the model's view-consistency settings (the pretraining's, for a
        checkpoint): what a new user changes, so the source subjects' idiosyncrasies are harder to fit."""
        if not ctx.train.augment:
            return None
        mc = ctx.model_config
        return partial(augment, gain_features=list(mc.gain_features), gain_std=mc.augment_gain_std,
                       rotation=mc.augment_rotation, drop=mc.augment_drop, noise=mc.augment_noise)


class AEMGScratch(AEMGFinetune):
    """The fine-tuned architecture from random weights (its head starts at random too: no features to probe), at one
    learning rate for every layer: there is nothing pretrained to keep."""

    name = "aemg_scratch"

    def build(self, ctx: FoldContext) -> nn.Module:
        return AEMGClassifier(AEMGModel(ctx.model_config), ctx.n_classes, ctx.train.head_features)

    def layer_decay(self, ctx: FoldContext) -> float:
        return 1.0


def _raw_shape(ctx: FoldContext) -> int:
    return int(ctx.data.raw.shape[2])


class CNN(NeuralMethod):
    name = "cnn"

    def build(self, ctx: FoldContext) -> nn.Module:
        from aemg_dist.evaluation.raw_models import RawCNN

        return RawCNN(_raw_shape(ctx), ctx.n_classes)


class SupervisedTransformer(NeuralMethod):
    name = "transformer"

    def build(self, ctx: FoldContext) -> nn.Module:
        from aemg_dist.evaluation.raw_models import PatchTransformer

        return PatchTransformer(_raw_shape(ctx), ctx.n_classes)


def _self_supervised(model: nn.Module, objective: str, ctx: FoldContext, name: str) -> nn.Module:
    """Pretrain `model` in place with raw_models.<objective> on the fold's unlabeled training windows."""
    from aemg_dist.evaluation import raw_models

    getattr(raw_models, objective)(model, ctx.raw(ctx.source), steps=ctx.train.pretrain_steps,
                                   batch_size=max(ctx.train.batch_size, 64), seed=ctx.seed(name, "pretrain"))
    return model


class SimCLR(CNN):
    name = "simclr"

    def build(self, ctx: FoldContext) -> nn.Module:
        return _self_supervised(super().build(ctx), "pretrain_simclr", ctx, self.name)


class MAE(SupervisedTransformer):
    name = "mae"

    def build(self, ctx: FoldContext) -> nn.Module:
        return _self_supervised(super().build(ctx), "pretrain_mae", ctx, self.name)


METHODS: dict[str, type[Method]] = {m.name: m for m in (AEMGFinetune, AEMGProbe, AEMGScratch, TDLDA, CNN,
                                                          SupervisedTransformer, SimCLR, MAE)}
