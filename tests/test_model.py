"""The AEMG model: input conversion, shapes with padding and empty windows, padding and permutation
invariance, VQ tokenizer (k-means init, dead-code restart, no collapse), masked token modeling,
two-stage freezing, config validation, size presets and safetensors export.

The training tests share one short run of the tiny preset on synthetic clustered tokens: 8
prototype feature vectors plus noise, where each of 4 "gestures" assigns a prototype to each
channel of an 8-electrode ring, so a codebook can find the prototypes and the code of a masked
token is predictable from its position and the other tokens of the window (which reveal the gesture).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode
from safetensors.torch import load_file, save_file

from aemg_dist.config import ConfigError, load_config
from aemg_dist.model import (AEMGModel, ModelConfig, VectorQuantizer, batch_to_torch, export_inference,
                             flops_per_token, load_inference, mask_tokens, param_count)
from aemg_dist.model.export import CONFIG_FILE, WEIGHTS_FILE, read_tokenize_settings
from aemg_dist.tokens import TokenBatch, TokenConfig, WindowTokens, feature_names

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "model"
N_FEATURES, N_CHANNELS, N_PROTOTYPES, N_GESTURES = 32, 8, 8, 4
_world = np.random.default_rng(1234)
PROTOTYPES = _world.normal(size=(N_PROTOTYPES, N_FEATURES)).astype(np.float32)
GESTURE_PROTOTYPE = _world.integers(N_PROTOTYPES, size=(N_GESTURES, N_CHANNELS))  # prototype of each channel
_angle = 2 * np.pi * np.arange(N_CHANNELS) / N_CHANNELS
RING = np.stack([np.cos(_angle), np.sin(_angle), np.zeros(N_CHANNELS)], axis=1).astype(np.float32)


def synthetic_window(rng: np.random.Generator, noise: float = 0.15) -> WindowTokens:
    """1-3 groups of 5-8 ring channels, each token its channel's prototype under the window's gesture + noise."""
    gesture = rng.integers(N_GESTURES)
    channels, groups, onsets = [], [], []
    for group in range(rng.integers(1, 4)):
        members = rng.permutation(N_CHANNELS)[:rng.integers(5, N_CHANNELS + 1)]  # in recruitment order
        channels.append(members)
        groups.append(np.full(members.size, group))
        onsets.append(0.6 * group + 0.1 * rng.random() + 0.02 * np.arange(members.size))
    channel, group = np.concatenate(channels), np.concatenate(groups)
    prototype = GESTURE_PROTOTYPE[gesture, channel]
    n = channel.size
    return WindowTokens(
        features=PROTOTYPES[prototype] + noise * rng.normal(size=(n, N_FEATURES)).astype(np.float32),
        coords=RING[channel], onset_s=np.concatenate(onsets).astype(np.float32),
        duration_s=rng.uniform(0.1, 0.3, n).astype(np.float32),
        rank=np.concatenate([np.arange(c.size) for c in channels]), group=group, channel=channel,
        active=prototype < 5)


def empty_window() -> WindowTokens:
    return WindowTokens(np.zeros((0, N_FEATURES), np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.float32),
                        np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                        np.zeros(0, bool))


def synthetic_batch(rng: np.random.Generator, n_windows: int = 32, p_empty: float = 0.1) -> dict[str, torch.Tensor]:
    windows = [empty_window() if rng.random() < p_empty else synthetic_window(rng) for _ in range(n_windows)]
    return batch_to_torch(TokenBatch.collate(windows))


def tiny(**overrides) -> ModelConfig:
    return load_config(ModelConfig, PRESETS / "tiny.yaml", [f"{k}={v}" for k, v in overrides.items()])


def train(model: AEMGModel, steps: int, seed: int = 0, lr: float = 3e-3) -> list[dict[str, float]]:
    """A plain AdamW loop on fresh synthetic batches; returns the per-step outputs as floats."""
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.param_groups(weight_decay=0.01), lr=lr)
    model.train()
    history = []
    for _ in range(steps):
        out = model(synthetic_batch(rng))
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        history.append({name: float(value.detach()) for name, value in out.items()})
    return history


def early_late(history: list[dict[str, float]], name: str, n: int = 10) -> tuple[float, float]:
    return float(np.mean([h[name] for h in history[:n]])), float(np.mean([h[name] for h in history[-n:]]))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the machine is shared, and the data-parallel test forks the process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained() -> tuple[AEMGModel, list[dict[str, float]]]:
    torch.manual_seed(0)
    model = AEMGModel(tiny(codebook_size=32))
    return model, train(model, steps=150)


# --- inputs, shapes, invariances ---------------------------------------------------------------

def test_default_n_features_matches_the_tokenizer():
    assert ModelConfig().n_features == len(feature_names(TokenConfig())) == N_FEATURES


def test_batch_to_torch_dtypes_and_shapes():
    batch = synthetic_batch(np.random.default_rng(0), n_windows=4)
    B, T = batch["mask"].shape
    assert batch["features"].shape == (B, T, N_FEATURES) and batch["coords"].shape == (B, T, 3)
    assert {k: v.dtype for k, v in batch.items()} == {
        "features": torch.float32, "coords": torch.float32, "onset_s": torch.float32, "duration_s": torch.float32,
        "rank": torch.int64, "group": torch.int64, "channel": torch.int64, "active": torch.bool, "mask": torch.bool}


def test_shapes_with_padding_and_empty_windows():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = AEMGModel(tiny()).eval()
    batch = batch_to_torch(TokenBatch.collate([synthetic_window(rng), empty_window(), synthetic_window(rng)]))
    T = batch["mask"].shape[1]
    window, tokens = model.encode(batch)
    assert window.shape == (3, 64) and tokens.shape == (3, T, 64)
    assert torch.isfinite(window).all() and torch.isfinite(tokens).all()
    out = model(batch)
    assert out["loss"].shape == () and all(torch.isfinite(v) for v in out.values())
    # an all-empty batch (one padding slot per row) still gives the window token and finite losses
    empty = batch_to_torch(TokenBatch.collate([empty_window(), empty_window()]))
    window, tokens = model.encode(empty)
    assert window.shape == (2, 64) and torch.equal(window[0], window[1])  # nothing tells two empty windows apart
    out = model.train()(empty)
    assert all(torch.isfinite(v) for v in out.values()) and float(out["mtm_loss"]) == 0.0
    out["loss"].backward()


def test_padding_values_and_amount_do_not_change_real_outputs():
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    model = AEMGModel(tiny()).eval()
    windows = [synthetic_window(rng) for _ in range(3)]
    batch = batch_to_torch(TokenBatch.collate(windows))
    real = batch["mask"]
    window, tokens = model.encode(batch)

    noisy = {k: v.clone() for k, v in batch.items()}
    for key in ("features", "coords", "onset_s", "duration_s"):
        noisy[key][~real] = 100 * torch.randn_like(noisy[key][~real])
    for key in ("rank", "group"):
        noisy[key][~real] = 7
    noisy["active"][~real] = True
    window2, tokens2 = model.encode(noisy)
    torch.testing.assert_close(window2, window)
    torch.testing.assert_close(tokens2[real], tokens[real])

    # more padding slots: only a working key mask keeps the extra (zero) positions out of attention
    longer = {k: torch.cat([v, v.new_zeros((v.shape[0], 5, *v.shape[2:]))], dim=1) for k, v in batch.items()}
    window3, tokens3 = model.encode(longer)
    torch.testing.assert_close(window3, window, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens3[:, :real.shape[1]][real], tokens[real], atol=1e-5, rtol=1e-5)


def test_layer_summary_is_every_blocks_mean_and_std_over_the_real_positions():
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    model = AEMGModel(tiny(n_layers=3)).eval()
    batch = batch_to_torch(TokenBatch.collate([synthetic_window(rng), empty_window(), synthetic_window(rng)]))
    summary = model.layer_summary(batch)
    assert summary.shape == (3, 2 * 3 * 64)
    stats = summary.view(3, 3, 2, 64)  # (window, block, mean / std, d)
    torch.testing.assert_close(stats[:, -1, 0], model.encode(batch)[0])  # the last block's mean is the window output
    assert torch.equal(stats[1, :, 1], torch.zeros(3, 64))  # an empty window: the window token alone, no spread
    assert (stats[[0, 2], :, 1] > 0).all()
    # padding never reaches a mean or a std
    longer = {k: torch.cat([v, v.new_zeros((v.shape[0], 5, *v.shape[2:]))], dim=1) for k, v in batch.items()}
    torch.testing.assert_close(model.layer_summary(longer), summary, atol=1e-5, rtol=1e-5)
    # a block's std by hand, for the first window's real positions (window token first)
    x, key_mask = model.embed(batch)
    first = model.encoder.blocks[0](x, key_mask)[0][key_mask[0]]
    torch.testing.assert_close(stats[0, 0, 1], first.std(dim=0, unbiased=False))


def test_a_classifier_head_reads_the_features_it_is_told_to():
    from aemg_dist.evaluation.classifiers import AEMGClassifier
    torch.manual_seed(0)
    batch = batch_to_torch(TokenBatch.collate([synthetic_window(np.random.default_rng(6)) for _ in range(2)]))
    for reads, width in (("window", 64), ("layers", 2 * 3 * 64)):
        classifier = AEMGClassifier(AEMGModel(tiny(n_layers=3)), 4, reads).eval()
        assert classifier.head.in_features == width
        expected = (classifier.backbone.layer_summary(batch) if reads == "layers"
                    else classifier.backbone.encode(batch)[0])
        torch.testing.assert_close(classifier(batch), classifier.head(expected))


def test_permuting_tokens_with_their_conditioning_changes_nothing():
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    model = AEMGModel(tiny()).eval()
    window = synthetic_window(rng)
    batch = batch_to_torch(TokenBatch.collate([window]))
    perm = torch.as_tensor(rng.permutation(window.n_tokens))
    permuted = {k: v[:, perm] for k, v in batch.items()}
    pooled, tokens = model.encode(batch)
    pooled2, tokens2 = model.encode(permuted)
    torch.testing.assert_close(pooled2, pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens2, tokens[:, perm], atol=1e-5, rtol=1e-5)
    # the conditioning matters: moving the features to other electrodes changes the output
    moved = dict(batch, features=batch["features"][:, perm])
    assert not torch.allclose(model.encode(moved)[0], pooled, atol=1e-3)


def test_same_seed_same_model_and_loss():
    rng_batch = synthetic_batch(np.random.default_rng(3))
    losses = []
    for _ in range(2):
        torch.manual_seed(5)
        model = AEMGModel(tiny(dropout=0.1))
        losses.append(model(rng_batch, generator=torch.Generator().manual_seed(9))["loss"])
    assert torch.equal(losses[0], losses[1])


# --- masking -----------------------------------------------------------------------------------

def test_mask_tokens_ratio_padding_and_whole_groups():
    rng = np.random.default_rng(4)
    batch = synthetic_batch(rng, n_windows=16)
    real, group = batch["mask"], batch["group"]
    positions = torch.arange(real.shape[1]).expand_as(real)
    masked = mask_tokens(real, positions, 0.3, torch.Generator().manual_seed(0))
    assert not (masked & ~real).any()
    n_real = real.sum(1)
    assert torch.equal(masked.sum(1), torch.where(n_real > 0, torch.round(0.3 * n_real).clamp_min(1), 0).long())
    assert torch.equal(masked, mask_tokens(real, positions, 0.3, torch.Generator().manual_seed(0)))
    assert not torch.equal(masked, mask_tokens(real, positions, 0.3, torch.Generator().manual_seed(1)))
    # the unit count the training step passes (the padded length, no read of the batch) draws the same masks
    assert torch.equal(masked, mask_tokens(real, positions, 0.3, torch.Generator().manual_seed(0),
                                           n_units=real.shape[1]))

    by_group = mask_tokens(real, group, 0.5, torch.Generator().manual_seed(0))
    for row in range(real.shape[0]):
        groups = group[row][real[row]]
        hidden = by_group[row][real[row]]
        for g in groups.unique():  # a group is masked entirely or not at all
            assert hidden[groups == g].all() or not hidden[groups == g].any()
        if groups.numel():
            n_hidden = len(groups[hidden].unique())
            assert n_hidden == max(1, round(0.5 * len(groups.unique())))


def test_masked_tokens_hide_their_content_but_keep_their_conditioning():
    torch.manual_seed(0)
    model = AEMGModel(tiny()).eval()
    batch = synthetic_batch(np.random.default_rng(5), n_windows=4, p_empty=0.0)
    masked = mask_tokens(batch["mask"], batch["group"], 0.5, torch.Generator().manual_seed(0))
    x, _ = model.embed(batch, masked)
    hidden = dict(batch, features=torch.where(masked[..., None], 5.0, batch["features"]), active=~batch["active"])
    assert torch.equal(model.embed(hidden, masked)[0][:, 1:][masked], x[:, 1:][masked])
    moved = dict(batch, coords=batch["coords"] + 0.3, onset_s=batch["onset_s"] + 0.1)
    assert not torch.isclose(model.embed(moved, masked)[0][:, 1:][masked], x[:, 1:][masked]).all(dim=-1).any()


def test_gradients_reach_the_tokenizer_from_its_own_losses_only():
    batch = synthetic_batch(np.random.default_rng(6))
    recon_only = {"commitment": 0.0, "mtm_weight": 0.0}  # reaches the encoder through the straight-through estimator
    mtm_only = {"commitment": 0.0, "recon_weight": 0.0}  # the targets are plain indices
    for weights, tokenizer_learns in ((recon_only, True), (mtm_only, False)):
        torch.manual_seed(0)
        model = AEMGModel(tiny(**weights))
        model(batch)["loss"].backward()
        grad = model.tokenizer.encoder.fc.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == tokenizer_learns
        assert (model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0) != tokenizer_learns


# --- the VQ tokenizer --------------------------------------------------------------------------

def test_kmeans_initialisation_places_codes_on_the_data():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(size=16, dim=N_FEATURES, decay=0.99, dead_code_steps=50, kmeans_iters=10)
    centres = torch.nn.functional.normalize(torch.as_tensor(PROTOTYPES), dim=1)
    noisy = centres[torch.randint(N_PROTOTYPES, (512,))] + 0.05 * torch.randn(512, N_FEATURES)
    data = torch.nn.functional.normalize(noisy, dim=1)
    nearest_before = (centres @ quantizer.codebook.T).max(dim=1).values
    quantizer.eval()(data, torch.ones(512, dtype=torch.bool))
    assert not quantizer.initialized  # eval mode never initialises or updates
    quantizer.train()(data, torch.ones(512, dtype=torch.bool))
    assert quantizer.initialized
    nearest_after = (centres @ quantizer.codebook.T).max(dim=1).values  # every prototype got a code
    assert nearest_before.max() < 0.8 and nearest_after.min() > 0.95
    assert ((quantizer.codebook @ centres.T).max(dim=1).values > 0.9).all()  # and every code sits on a prototype


def test_ema_statistics_follow_the_valid_vectors_in_training_mode_only():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(size=2, dim=2, decay=0.5, dead_code_steps=50, kmeans_iters=5).train()
    angle = lambda degrees: torch.stack([torch.cos(torch.deg2rad(degrees)), torch.sin(torch.deg2rad(degrees))], dim=1)
    first = angle(torch.tensor([0.0, 90.0]))
    quantizer(first, torch.ones(2, dtype=torch.bool))  # k-means init (one code per vector), then a first EMA step
    expected_sum, expected_size = 0.5 * first, torch.tensor([0.5, 0.5])
    valid = torch.tensor([True, True, True, False])  # the last vector must not count
    for degrees in (torch.tensor([10.0, 20.0, 70.0, 200.0]), torch.tensor([30.0, 60.0, 80.0, 200.0])):
        x = angle(degrees)
        near_zero = degrees[:3] < 45  # the vectors that pick the code at 0 degrees
        sums = torch.stack([x[:3][near_zero].sum(0), x[:3][~near_zero].sum(0)])
        counts = torch.stack([near_zero.sum(), (~near_zero).sum()]).float()
        expected_sum, expected_size = 0.5 * expected_sum + 0.5 * sums, 0.5 * expected_size + 0.5 * counts
        quantizer(x, valid)
    order = quantizer.codebook[:, 1].argsort()  # the code near 0 degrees first
    torch.testing.assert_close(quantizer.embed_sum[order], expected_sum)
    torch.testing.assert_close(quantizer.cluster_size[order], expected_size)
    torch.testing.assert_close(quantizer.codebook[order], torch.nn.functional.normalize(expected_sum, dim=1))
    frozen = quantizer.codebook.clone()
    quantizer.eval()(angle(torch.tensor([45.0, 50.0])), torch.ones(2, dtype=torch.bool))
    assert torch.equal(quantizer.codebook, frozen)


def test_dead_codes_are_restarted_on_current_inputs():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(size=8, dim=4, decay=0.9, dead_code_steps=3, kmeans_iters=5).train()
    data = torch.nn.functional.normalize(torch.rand(256, 4) + 0.1, dim=1)  # the positive orthant only
    valid = torch.ones(256, dtype=torch.bool)
    quantizer(data, valid)
    quantizer.codebook[4:] = -quantizer.codebook[:4]  # antipodal codes: never the nearest, i.e. dead
    for _ in range(2):
        out = quantizer(data, valid)
        assert out.usage <= 0.5
    assert (quantizer.unused_steps[4:] == 2).all()
    quantizer(data, valid)  # third unused step: restart
    assert (quantizer.unused_steps[4:] == 0).all()
    assert ((quantizer.codebook[4:] @ data.T).max(dim=1).values > 0.999).all()  # each restarted code is an input
    assert quantizer(data, valid).usage > 0.5


def _narrowing_inputs(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors that spread widely for 8 steps, then gather in a narrow cone (most codes die there)."""
    spread = 1.0 if step < 8 else 0.1
    data = torch.nn.functional.normalize(torch.ones(64, 4) + spread * torch.randn(64, 4), dim=1)
    return data, torch.rand(64) < 0.9


def _count_calls(monkeypatch, owner, name: str) -> list[int]:
    """Count the calls of owner.name (a one-element list that grows with each call's count)."""
    calls, original = [0], getattr(owner, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_dead_code_check_reads_the_device_only_when_a_code_can_be_dead(monkeypatch):
    """unused_steps grows by at most 1 per step, so after one read the quantizer knows for how many steps no code
    can reach dead_code_steps and skips the read (a host sync on a GPU) until then: the same restarts, the same
    buffers as reading every step, with fewer reads."""
    restarts = _count_calls(monkeypatch, VectorQuantizer, "_restart")
    reads = _count_calls(monkeypatch, torch.Tensor, "tolist")
    states = {}
    for every_step in (True, False):
        restarts[0] = reads[0] = 0
        torch.manual_seed(0)
        quantizer = VectorQuantizer(size=16, dim=4, decay=0.9, dead_code_steps=5, kmeans_iters=3).train()
        for step in range(40):
            if every_step:
                quantizer._steps_without_restart = 0
            quantizer(*_narrowing_inputs(step))
        states[every_step] = (quantizer.state_dict(), restarts[0], reads[0])
    (checked, checked_restarts, checked_reads), (skipped, skipped_restarts, skipped_reads) = states[True], states[False]
    assert checked_restarts >= 2 and skipped_restarts == checked_restarts
    assert all(torch.equal(checked[name], skipped[name]) for name in checked)
    assert checked_reads == 40 and skipped_reads <= 40 // 2


def test_a_loaded_quantizer_reads_its_new_buffers():
    """What the quantizer knows of its buffers without reading them (initialized, steps until a code can die) is
    forgotten on load_state_dict: loaded, it continues as the quantizer that saved the state would have."""
    def quantizer(steps: int) -> VectorQuantizer:
        torch.manual_seed(steps)
        vq = VectorQuantizer(size=16, dim=4, decay=0.9, dead_code_steps=5, kmeans_iters=3).train()
        for step in range(steps):
            vq(*_narrowing_inputs(step))
        return vq

    def continued(vq: VectorQuantizer) -> dict[str, torch.Tensor]:
        torch.manual_seed(99)
        for step in range(8, 20):
            vq(*_narrowing_inputs(step))
        return vq.state_dict()

    for saved_after in (0, 12):  # a fresh (uninitialized) state, and one of codes about to die
        loaded = quantizer(1)  # initialized, all codes just used: it would skip the next reads
        assert loaded._steps_without_restart > 0
        loaded.load_state_dict(quantizer(saved_after).state_dict())
        expected = continued(quantizer(saved_after))
        assert all(torch.equal(value, expected[name]) for name, value in continued(loaded).items())


def _data_parallel_quantizer(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One rank of test_codebook_stays_identical_across_data_parallel_ranks."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(rank)  # different random draws and different data on each rank
    quantizer = VectorQuantizer(size=8, dim=4, decay=0.9, dead_code_steps=2, kmeans_iters=3).train()
    probe = torch.nn.functional.normalize(torch.rand(16, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    probe_codes = []
    for step in range(8):
        spread = 1.0 if step < 3 else 0.1  # then a narrow cone: most codes die and are restarted
        data = torch.nn.functional.normalize(torch.ones(64, 4) + spread * torch.randn(64, 4), dim=1)
        valid = torch.cat([torch.rand(64) < 0.9, torch.zeros(16, dtype=torch.bool)])  # the probe never counts
        probe_codes.append(quantizer(torch.cat([data, probe]), valid).codes[64:])
    save_file({**quantizer.state_dict(), "probe_codes": torch.stack(probe_codes)}, f"{out_dir}/rank{rank}.safetensors")
    dist.destroy_process_group()


def test_codebook_stays_identical_across_data_parallel_ranks(tmp_path):
    # fork: the ranks inherit the imported modules instead of importing torch again (seconds each)
    torch.multiprocessing.start_processes(_data_parallel_quantizer, args=(2, str(tmp_path / "init"), str(tmp_path)),
                                          nprocs=2, start_method="fork")
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in range(2))
    # same codebook before every step (the same probe vectors got the same codes) and the same state after
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    # both ranks' counts went into the EMA: one rank alone (<= 64 valid vectors a step) could reach at most
    # (1 - 0.9 ** 8) * 64 = 36, plus 1 for each restarted code
    assert rank0["cluster_size"].sum() > 50


def test_training_lowers_losses_and_uses_the_codebook(trained):
    model, history = trained
    first, last = early_late(history, "loss")
    assert last < 0.7 * first, (first, last)
    first, last = early_late(history, "recon_loss")
    assert last < 0.5 * first, (first, last)
    _, usage = early_late(history, "codebook_usage")
    _, perplexity = early_late(history, "perplexity")
    assert usage >= 0.25 and perplexity > 4, (usage, perplexity)


def test_masked_prediction_beats_chance_after_training(trained):
    model, _ = trained
    model.eval()
    batch = synthetic_batch(np.random.default_rng(99), n_windows=64)
    with torch.no_grad():
        out = model(batch, generator=torch.Generator().manual_seed(0))
        codes = model.tokenizer.quantizer(model.tokenizer.encoder(batch["features"]), batch["mask"]).codes
    counts = torch.bincount(codes[batch["mask"]], minlength=model.cfg.codebook_size).float()
    majority = float(counts.max() / counts.sum())  # always guessing the most frequent code
    assert float(out["mtm_accuracy"]) > 2 * majority, (float(out["mtm_accuracy"]), majority)


def test_masked_feature_regression_learns_the_masked_features_and_stays_off_by_default():
    assert AEMGModel(tiny()).feature_head is None and "feature_loss" not in AEMGModel(tiny())(
        synthetic_batch(np.random.default_rng(0)))
    torch.manual_seed(0)
    model = AEMGModel(tiny(feature_weight=1.0))
    history = train(model, steps=150)
    first, last = early_late(history, "feature_loss")
    # the masked tokens' features are their channel's prototype under the window's gesture: predictable from context
    variance = float(np.var(PROTOTYPES[GESTURE_PROTOTYPE].reshape(-1, N_FEATURES), axis=0).mean())
    assert last < 0.5 * first and last < 0.5 * variance, (first, last, variance)
    # the feature head's gradient comes from the feature loss only, and it is frozen for fine-tuning
    from aemg_dist.evaluation.classifiers import AEMGClassifier

    assert not any(p.requires_grad for p in AEMGClassifier(model, 4).backbone.feature_head.parameters())


def test_two_stage_training_freezes_what_it_should():
    torch.manual_seed(0)
    stage1 = AEMGModel(tiny(objective="tokenizer"))
    encoder_before = {k: v.clone() for k, v in stage1.encoder.state_dict().items()}
    history = train(stage1, steps=20)
    assert "mtm_loss" not in history[0]
    assert all(torch.equal(v, encoder_before[k]) for k, v in stage1.encoder.state_dict().items())

    stage2 = AEMGModel(tiny(objective="masked"))
    stage2.load_state_dict(stage1.state_dict())
    tokenizer_before = {k: v.clone() for k, v in stage2.tokenizer.state_dict().items()}  # codebook buffers included
    encoder_before = {k: v.clone() for k, v in stage2.encoder.state_dict().items()}
    history = train(stage2, steps=10)
    assert np.isfinite(history[-1]["mtm_loss"])
    assert all(torch.equal(v, tokenizer_before[k]) for k, v in stage2.tokenizer.state_dict().items())
    assert not all(torch.equal(v, encoder_before[k]) for k, v in stage2.encoder.state_dict().items())


# --- config, presets, export -------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    ({"codebook_size": 0}, "codebook_size"),
    ({"mask_ratio": 1.0}, "mask_ratio"),
    ({"mask_ratio": -0.1}, "mask_ratio"),
    ({"mask_ratio": 0.0}, "mask_ratio"),
    ({"d_model": 65, "n_heads": 4}, "divisible by n_heads"),
    ({"objective": "mae"}, "objective"),
    ({"ema_decay": 1.0}, "ema_decay"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**overrides)
    with pytest.raises(ConfigError, match=message):
        load_config(ModelConfig, PRESETS / "tiny.yaml", [f"{k}={v}" for k, v in overrides.items()])
    ModelConfig(objective="tokenizer", mask_ratio=0.0)  # no masking needed for stage 1


@pytest.mark.parametrize("preset, low, high", [
    ("tiny", 0, 1e6), ("small", 5e6, 10e6), ("base", 30e6, 50e6), ("large", 100e6, 200e6), ("xl", 300e6, 600e6)])
def test_presets_load_and_hit_their_sizes(preset, low, high):
    cfg = load_config(ModelConfig, PRESETS / f"{preset}.yaml")
    assert low <= param_count(cfg) <= high
    n = param_count(cfg, non_embedding=True)
    assert flops_per_token(cfg, 128) == 6 * n + 12 * cfg.n_layers * cfg.d_model * 129


def test_flops_formula_matches_counted_flops():
    cfg = ModelConfig()
    model = AEMGModel(cfg).train()
    batch = synthetic_batch(np.random.default_rng(0), n_windows=4, p_empty=0.0)
    batch["mask"][:] = True  # every slot counts as a token
    with FlopCounterMode(display=False) as counter:
        model(batch)["loss"].backward()
    per_token = counter.get_total_flops() / batch["mask"].numel()
    assert per_token == pytest.approx(flops_per_token(cfg, batch["mask"].shape[1]), rel=0.05)


def test_param_count_matches_a_real_model():
    cfg = tiny()
    assert param_count(cfg) == sum(p.numel() for p in AEMGModel(cfg).parameters())


def test_export_then_load_gives_identical_outputs(trained, tmp_path):
    model, _ = trained
    model.eval()
    export_inference(model, model.cfg, tmp_path)
    loaded = load_inference(tmp_path)
    assert not loaded.training
    batch = synthetic_batch(np.random.default_rng(7), n_windows=8)
    for a, b in zip(model.encode(batch), loaded.encode(batch)):
        assert torch.equal(a, b)
    out, out2 = (m(batch, generator=torch.Generator().manual_seed(0)) for m in (model, loaded))
    assert all(torch.equal(out[k], out2[k]) for k in out)


def test_load_refuses_unknown_versions_and_mismatched_shapes(tmp_path):
    torch.manual_seed(0)
    cfg = tiny()
    export_inference(AEMGModel(cfg), cfg, tmp_path)
    config = tmp_path / CONFIG_FILE
    text = config.read_text()
    config.write_text(text.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(ValueError, match=f"{CONFIG_FILE}.*format_version 99"):
        load_inference(tmp_path)
    config.write_text(text.replace('"d_model": 64', '"d_model": 32'))
    with pytest.raises(ValueError, match=f"{WEIGHTS_FILE}.*wrong shapes"):
        load_inference(tmp_path)
    with pytest.raises(ValueError, match="does not fit"):
        export_inference(AEMGModel(cfg), replace(cfg, codebook_size=16), tmp_path / "other")


def test_an_export_records_the_token_settings_it_is_given(tmp_path):
    cfg = tiny()
    export_inference(AEMGModel(cfg), cfg, tmp_path / "plain")
    assert read_tokenize_settings(tmp_path / "plain") is None  # nothing recorded: the caller falls back
    settings = {"tokens": {"window_summary": False}, "shard_s": 30.0}
    export_inference(AEMGModel(cfg), cfg, tmp_path / "recorded", settings)
    assert read_tokenize_settings(tmp_path / "recorded") == settings
    config = tmp_path / "recorded" / CONFIG_FILE
    config.write_text(json.dumps({**json.loads(config.read_text()), "tokenize": ["not an object"]}))
    with pytest.raises(ValueError, match=f"{CONFIG_FILE}: tokenize is"):
        read_tokenize_settings(tmp_path / "recorded")


def test_augmented_views_change_gains_layout_and_tokens_but_not_the_input():
    from aemg_dist.model.augment import augment

    batch = synthetic_batch(np.random.default_rng(3), p_empty=0.0)
    before = {k: v.clone() for k, v in batch.items()}
    view = augment(batch, gain_features=[0, 1], gain_std=0.5, rotation=0.4, drop=0.2, noise=0.0,
                   generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], batch[k]) for k in batch)  # the input stays
    kept = view["mask"]
    assert (kept <= batch["mask"]).all() and 0.6 < kept.sum() / batch["mask"].sum() < 0.95
    shift = view["features"] - batch["features"]
    assert torch.allclose(shift[kept][:, 2:], torch.zeros(1)) and shift[kept][:, :2].abs().max() > 0.1
    assert torch.allclose(shift[kept][:, 0], shift[kept][:, 1])  # one gain per (window, channel) on both columns
    for w in range(batch["mask"].shape[0]):  # the same channel of a window gets the same gain in every group
        for ch in batch["channel"][w][kept[w]].unique():
            gains = shift[w][kept[w] & (batch["channel"][w] == ch), 0]
            assert torch.allclose(gains, gains[0].expand_as(gains))
    radius = lambda c: c[..., :2].norm(dim=-1)
    assert torch.allclose(radius(view["coords"]), radius(batch["coords"]), atol=1e-6)
    assert torch.equal(view["coords"][..., 2], batch["coords"][..., 2])


def test_view_consistency_trains_the_pooled_features():
    from aemg_dist.evaluation.classifiers import AEMGClassifier

    torch.manual_seed(0)
    model = AEMGModel(tiny(contrast_weight=1.0, gain_features=[0, 1, 2]))
    history = train(model, steps=60)
    first, last = early_late(history, "contrast_loss")
    assert last < 0.8 * first, (first, last)
    assert not any(p.requires_grad for p in AEMGClassifier(model, 4).backbone.projection.parameters())
