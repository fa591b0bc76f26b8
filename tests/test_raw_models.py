"""Raw-signal baselines: RawCNN, PatchTransformer, SimCLR and MAE pieces and drivers (tiny sizes, CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aemg_dist.evaluation.raw_models import (MAEDecoder, PatchTransformer, RawCNN, augment, mae_loss, nt_xent,
                                             pretrain_mae, pretrain_simclr, random_patch_mask)

T, PATCH = 200, 10


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on cores shared with other jobs, a descheduled second thread stalled every
    op of these tiny models (60 ms for a 0.4 ms convolution), turning seconds into minutes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cnn(c: int, dropout: float = 0.1) -> RawCNN:
    return RawCNN(c, 5, width=16, dropout=dropout)


def _transformer(c: int, max_patches: int = 20) -> PatchTransformer:
    return PatchTransformer(c, 5, patch=PATCH, d_model=32, n_layers=1, n_heads=2, max_patches=max_patches)


def _bursts(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, T, 4) float32 windows and labels: class 0 fires channels 0-1, class 1 channels 2-3, each as an
    80 Hz burst of random phase, onset and gain; every channel carries unit-scale noise x 0.3."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    t = np.arange(T) / 1000.0
    onset = rng.integers(0, T // 2, (n, 1))
    envelope = ((np.arange(T) >= onset) & (np.arange(T) < onset + T // 2)).astype(float)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    burst = envelope * np.sin(2 * np.pi * 80 * t + phase) * rng.uniform(2, 3, (n, 1))
    x = 0.3 * rng.standard_normal((n, T, 4))
    for k in range(2):
        x[y == k, :, 2 * k] += burst[y == k]
        x[y == k, :, 2 * k + 1] += 0.7 * burst[y == k]
    return x.astype(np.float32), y


# ---------------------------------------------------------------- models

@pytest.mark.parametrize("c", [4, 8, 64])
def test_feature_and_logit_shapes(c):
    x = torch.randn(3, 57, c)  # 57 = 5 patches of 10 and 7 dropped samples
    for model in (_cnn(c), _transformer(c)):
        h, logits = model.features(x), model(x)
        assert h.shape == (3, model.feature_dim) and logits.shape == (3, 5)
        assert h.dtype == logits.dtype == torch.float32
        assert torch.isfinite(logits).all()


def test_models_reject_windows_of_another_channel_count():
    for model in (_cnn(4), _transformer(4)):
        with pytest.raises(ValueError, match="expected windows"):
            model(torch.randn(2, T, 5))


def test_patch_transformer_rejects_too_short_and_too_long_windows():
    model = _transformer(4, max_patches=8)
    with pytest.raises(ValueError, match="patches"):
        model(torch.randn(2, PATCH - 1, 4))
    with pytest.raises(ValueError, match="patches"):
        model(torch.randn(2, 9 * PATCH, 4))
    assert model(torch.randn(2, 8 * PATCH + PATCH - 1, 4)).shape == (2, 5)


def test_patch_transformer_drops_the_remainder_samples():
    model = _transformer(4).eval()
    x = torch.randn(2, 5 * PATCH + 7, 4)
    changed_tail = x.clone()
    changed_tail[:, 5 * PATCH:] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), model.features(x[:, :5 * PATCH]))
        torch.testing.assert_close(model.features(x), model.features(changed_tail))


def test_patch_transformer_knows_where_each_patch_is():
    """Attention alone is blind to order: only the positional embedding makes swapping patches matter."""
    model = _transformer(4).eval()
    x = torch.randn(2, 5 * PATCH, 4)
    swapped = torch.cat([x[:, PATCH:2 * PATCH], x[:, :PATCH], x[:, 2 * PATCH:]], dim=1)
    with torch.no_grad():
        assert not torch.allclose(model.features(x), model.features(swapped))


def test_cnn_normalization_is_per_window_and_mode_independent():
    """GroupNorm: a window's output does not depend on its batch, nor on train vs eval mode."""
    model = _cnn(8, dropout=0.0)
    x = torch.randn(4, T, 8)
    with torch.no_grad():
        train_out = model(x)
        alone = model(x[:1])
        eval_out = model.eval()(x)
    torch.testing.assert_close(train_out[:1], alone)
    torch.testing.assert_close(train_out, eval_out)


# ---------------------------------------------------------------- SimCLR pieces

def test_augment_keeps_shape_and_dtype_changes_values_and_is_seeded():
    x = torch.randn(64, T, 4) + 3.0  # no sample is zero before augmentation
    view = augment(x, torch.Generator().manual_seed(1))
    assert view.shape == x.shape and view.dtype == x.dtype
    assert not torch.allclose(view, x)
    torch.testing.assert_close(view, augment(x, torch.Generator().manual_seed(1)))
    assert not torch.allclose(view, augment(x, torch.Generator().manual_seed(2)))
    assert augment(x.double()).dtype == torch.float64


def test_augment_channel_dropout_zeroes_at_most_one_channel():
    x = torch.randn(64, T, 4) + 3.0
    zeroed = (augment(x, torch.Generator().manual_seed(0)) == 0).all(dim=1)  # (B, C): channel all zero
    per_window = zeroed.sum(dim=1)
    assert per_window.max() == 1
    assert 10 < per_window.sum() < 54  # about half of the 64 windows lose a channel


def _nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n, b = len(z), len(z1)
    total = 0.0
    for i in range(n):
        partner = (i + b) % n
        logits = {k: float(z[i] @ z[k]) / temperature for k in range(n) if k != i}
        total -= logits[partner] - math.log(sum(math.exp(v) for v in logits.values()))
    return total / n


def test_nt_xent_matches_a_direct_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for temperature in (0.1, 0.5):
        assert nt_xent(z1, z2, temperature).item() == pytest.approx(_nt_xent_loop(z1, z2, temperature), rel=1e-5)


def test_nt_xent_is_low_for_identical_views_and_near_chance_for_random_ones():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(32, 128, generator=g), torch.randn(32, 128, generator=g)
    chance = math.log(2 * 32 - 1)
    assert nt_xent(z1, z1).item() < 0.1
    assert nt_xent(z1, z2).item() > chance - 1.0


# ---------------------------------------------------------------- MAE pieces

def test_random_patch_mask_masks_the_same_count_per_row_at_least_one():
    for ratio, expected in ((0.5, 10), (0.75, 15), (0.01, 1)):
        mask = random_patch_mask(6, 20, ratio, torch.Generator().manual_seed(0))
        assert mask.dtype == torch.bool and (mask.sum(dim=1) == expected).all()
    assert not torch.equal(mask[0], random_patch_mask(6, 20, 0.5, torch.Generator().manual_seed(0))[1])
    with pytest.raises(ValueError, match="mask_ratio"):
        random_patch_mask(2, 20, 1.0)


class _ZeroDecoder(torch.nn.Module):
    """Predicts 0 for every sample, so the loss is the mean square of the scored targets; keeps the
    encoder output it was given."""

    def __init__(self, n_values: int):
        super().__init__()
        self.n_values = n_values

    def forward(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.latent = latent
        return torch.zeros(*mask.shape, self.n_values) + 0.0 * latent.sum()


def _louder_patch(x: torch.Tensor, window: int, patch: int) -> torch.Tensor:
    louder = x.clone()
    louder[window, patch * PATCH:(patch + 1) * PATCH] += 100.0
    return louder


def test_mae_loss_scores_masked_patches_only():
    model = _transformer(4)
    decoder = _ZeroDecoder(PATCH * 4)
    x = torch.randn(3, T, 4)
    mask = random_patch_mask(3, T // PATCH, 0.5, torch.Generator().manual_seed(7))

    def loss_of(windows: torch.Tensor) -> float:
        return mae_loss(model, decoder, windows, 0.5, torch.Generator().manual_seed(7)).item()

    patches = model.patchify(x)
    assert loss_of(x) == pytest.approx((patches ** 2).mean(dim=2)[mask].mean().item(), rel=1e-5)
    # blow up one visible and one masked patch of window 0: only the masked one may count
    visible_patch, masked_patch = int((~mask[0]).nonzero()[0]), int(mask[0].nonzero()[0])
    assert loss_of(_louder_patch(x, 0, visible_patch)) == pytest.approx(loss_of(x), rel=1e-5)
    assert loss_of(_louder_patch(x, 0, masked_patch)) > 100 * loss_of(x)


def test_mae_encoder_sees_visible_patches_only():
    model = _transformer(4).eval()
    decoder = _ZeroDecoder(PATCH * 4)
    x = torch.randn(3, T, 4)
    mask = random_patch_mask(3, T // PATCH, 0.5, torch.Generator().manual_seed(7))

    def latent_of(windows: torch.Tensor) -> torch.Tensor:
        mae_loss(model, decoder, windows, 0.5, torch.Generator().manual_seed(7))
        return decoder.latent

    assert latent_of(x).shape == (3, 1 + 10, 32)
    visible_patch, masked_patch = int((~mask[0]).nonzero()[0]), int(mask[0].nonzero()[0])
    torch.testing.assert_close(latent_of(_louder_patch(x, 0, masked_patch)), latent_of(x))
    assert not torch.allclose(latent_of(_louder_patch(x, 0, visible_patch))[0], latent_of(x)[0])


def test_mae_loss_with_the_decoder_trains_encoder_and_decoder():
    model = _transformer(4)
    decoder = MAEDecoder(32, PATCH, 4, max_patches=20, d_decoder=16, n_heads=2)
    loss = mae_loss(model, decoder, torch.randn(3, T, 4), 0.5, torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for module in (model.embed, model.encoder, decoder.blocks, decoder.out):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert decoder.mask_token.grad.abs().sum() > 0
    assert model.head.weight.grad is None  # the classifier head plays no part in pretraining


# ---------------------------------------------------------------- pretraining drivers

def test_pretraining_is_deterministic_and_keeps_the_encoder_state():
    x, _ = _bursts(40, seed=0)
    x.setflags(write=False)  # the drivers copy batches out of read-only arrays
    for make, pretrain in ((_cnn, pretrain_simclr), (_transformer, pretrain_mae)):
        runs = []
        for seed in (0, 0, 1):
            torch.manual_seed(123)
            encoder = make(4)
            keys = set(encoder.state_dict())
            runs.append((pretrain(encoder, x, steps=3, batch_size=64, seed=seed), encoder.state_dict()))
            assert set(encoder.state_dict()) == keys  # no head or decoder left inside the encoder
        (losses_a, state_a), (losses_b, state_b), (losses_c, _) = runs
        assert losses_a == losses_b and len(losses_a) == 3
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
        assert losses_a != losses_c


@pytest.fixture(scope="module")
def simclr_cnn() -> tuple[RawCNN, list[float]]:
    torch.manual_seed(0)
    encoder = _cnn(4)
    x, _ = _bursts(256, seed=0)
    return encoder, pretrain_simclr(encoder, x, steps=150, batch_size=32, lr=3e-3, seed=0)


def test_pretrain_simclr_reduces_its_loss(simclr_cnn):
    """Chance is log(2B - 1) = 4.14; telling the two classes apart, and windows of a class no better
    than at random (the augmentations erase what else tells them apart), gives log B = 3.47."""
    _, losses = simclr_cnn
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.3


def test_pretrain_mae_reduces_its_loss():
    torch.manual_seed(0)
    x, _ = _bursts(256, seed=0)
    losses = pretrain_mae(_transformer(4), x, steps=200, batch_size=32, lr=3e-3, seed=0)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def test_simclr_features_separate_held_out_classes(simclr_cnn):
    encoder, _ = simclr_cnn
    x, y = _bursts(200, seed=1)
    with torch.no_grad():
        h = encoder.eval().features(torch.from_numpy(x)).numpy()
    train, test = slice(0, 100), slice(100, 200)
    centroids = np.stack([h[train][y[train] == k].mean(axis=0) for k in (0, 1)])
    pred = np.argmin(((h[test][:, None] - centroids[None]) ** 2).sum(axis=2), axis=1)
    assert np.mean(pred == y[test]) > 0.8
