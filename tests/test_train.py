"""Pretraining: the plain loop, resume, Ray Train + DeepSpeed (ZeRO 0/2/3), fault recovery, export."""

import csv
import json
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from aemg_dist.artifacts import TokenizeConfig
from aemg_dist.config import ConfigError
from aemg_dist.data import tokenize_corpus
from aemg_dist.model import load_inference, param_count
from aemg_dist.tokens import TokenConfig
from aemg_dist.train import collate, ingest_options, load_pretrain_config, pretrain, split_tables, to_device
from preprocessing.prepare import prepare
from preprocessing.synthetic import SyntheticConfig, synthetic_jobs

TINY = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "tiny.yaml"


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    assert prepare(synthetic_jobs(SyntheticConfig(scale="tiny")), root / "corpus.zarr", workers=1, progress=False).ok
    tokenize_corpus(root / "corpus.zarr", root / "tokens", workers=1, progress=False)
    return root / "tokens"


@pytest.fixture(scope="module")
def tokens_in_parts(tokens):
    """The same corpus in several part files: each Ray Train rank then reads its own (`tokens` is one file, which
    the ranks share)."""
    out = tokens.parent / "tokens-in-parts"
    tokenize_corpus(tokens.parent / "corpus.zarr", out, TokenizeConfig(task_s=20.0), workers=1, progress=False)
    assert len(list(out.glob("*.parquet"))) >= 4
    return out


def _config(tokens, out, *overrides):
    return load_pretrain_config(TINY, [
        f"data.tokens={tokens}", f"run.out={out}", "data.batch_size=16", "optim.warmup_steps=5",
        "run.log_every=5", "run.val_every=20", "model.dead_code_steps=1000", *overrides])


def _metrics(out):
    with (out / "metrics.csv").open() as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def test_plain_loop_learns_and_uses_the_codebook(tokens, tmp_path):
    result = pretrain(_config(tokens, tmp_path, "dist.ray=false", "optim.max_steps=60"))
    rows = _metrics(tmp_path)
    assert result.steps == 60 and rows[-1]["step"] == 60
    first, last = rows[0], rows[-1]
    assert last["loss"] < 0.8 * first["loss"] and last["recon_loss"] < first["recon_loss"]
    assert last["codebook_usage"] >= 0.25 and last["perplexity"] > 4  # no collapse onto a few codes
    for name in ("config.yaml", "loss.png", "codebook.png", "export/model.safetensors", "local_checkpoint/state.pt"):
        assert (tmp_path / name).exists(), name


def test_no_ray_pretraining_never_imports_ray(tokens, tmp_path):
    code = (f"import sys; from aemg_dist.train import load_pretrain_config, pretrain; "
            f"pretrain(load_pretrain_config({str(TINY)!r}, ['data.tokens={tokens}', 'run.out={tmp_path / 'run'}', "
            f"'dist.ray=false', 'optim.max_steps=2', 'data.batch_size=8'])); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.claim("running the same command again resumes; a resumed --no-ray run repeats the curve")
def test_resume_continues_the_same_curve(tokens, tmp_path):
    straight = tmp_path / "straight"
    pretrain(_config(tokens, straight, "dist.ray=false", "optim.max_steps=40", "run.checkpoint_every=20"))
    resumed = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="injected fault"):
        pretrain(_config(tokens, resumed, "dist.ray=false", "optim.max_steps=40", "run.checkpoint_every=20",
                         "run.fail_at_step=25"))
    pretrain(_config(tokens, resumed, "dist.ray=false", "optim.max_steps=40", "run.checkpoint_every=20"))
    a = {r["step"]: r["loss"] for r in _metrics(straight)}
    b = {r["step"]: r["loss"] for r in _metrics(resumed)}  # steps 20-25 were logged twice: the later row wins
    assert set(a) == set(b)
    # the data order and every random draw depend on (seed, step) only: the curves agree to float noise
    assert np.allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(a)], rtol=1e-4)


def test_export_reloads_to_identical_outputs(tokens, tmp_path):
    cfg = _config(tokens, tmp_path, "dist.ray=false", "optim.max_steps=10")
    pretrain(cfg)
    model = load_inference(tmp_path / "export")
    again = load_inference(tmp_path / "export")
    train, _ = split_tables(cfg.data)
    batch = collate(train.slice(0, 8), cfg.data.max_tokens)
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(model.encode(batch)[0], again.encode(batch)[0])


@pytest.mark.parametrize("override,match", [
    ("no_such_key=1", "no_such_key"),
    ("model.codebook_size=0", "codebook_size"),
    ("model.mask_ratio=1.0", "mask_ratio"),
    ("data.batch_size=15", "divisible"),
    ("preset=huge", "unknown model preset"),
    ("optim.implementation=fast", "optim.implementation must be one of auto, fused, foreach, for-loop, got 'fast'"),
    ("data.read_ahead_mb=8", "read_ahead_mb"),
])
def test_bad_configs_fail_before_any_worker_starts(tokens, tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        _config(tokens, tmp_path, override)


def test_each_reader_may_hold_read_ahead_mb_of_the_object_store_and_keeps_the_drivers_other_options():
    from ray.data import DataContext

    context = DataContext.get_current()
    order, context.execution_options.preserve_order = context.execution_options.preserve_order, True
    try:
        options = ingest_options(64)
    finally:
        context.execution_options.preserve_order = order
    assert options.resource_limits.object_store_memory == 64 * 2**20
    assert options.preserve_order  # carried over from the driver's context, as Ray Train's default does
    assert context.execution_options.resource_limits.object_store_memory != 64 * 2**20  # the driver's left as it was


def test_missing_tokens_fail_with_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="aemg tokenize"):
        pretrain(_config(tmp_path / "nothing", tmp_path, "dist.ray=false"))


def _first_steps(run):
    return [json.loads((run / "workers" / f"first-step-rank-{rank}.json").read_text()) for rank in (0, 1)]


def _check_first_step_matches_the_plain_model(tokens, run, cfg, shared_reader=False):
    """Each rank's first-step loss equals the plain model's (same seed, so the same initial weights) on the windows
    that rank drew, with the masks of (seed, rank, step 0), and rank 0's is the step-1 loss in metrics.csv.

    The Ray path cannot draw the plain loop's first batch by design: each rank streams its own share through Ray
    Data, and the masks are drawn per (seed, rank, step). So the reference is the plain model on exactly the windows
    each rank recorded; the loss of the global batch is the mean of the two. One more thing is shared by design: the
    codebook's k-means initialisation on the first batch is broadcast from rank 0 (quantizer.py), so every rank's
    reference runs its own initialisation (as the rank did, drawing the same random numbers) and then takes rank 0's.
    Tolerance 1e-5 relative: the same float32 ops, but ZeRO's flattened and gathered parameters may change a
    summation order by an ulp (measured: equal to the last digit)."""
    from aemg_dist.model import AEMGModel

    records = _first_steps(run)
    if shared_reader:  # one part file: both ranks draw the same batches, and each keeps its half
        rank0, rank1 = ({tuple(w) for w in record["windows"]} for record in records)
        assert not rank0 & rank1
    train, _ = split_tables(cfg.data)
    where = {w: i for i, w in enumerate(zip(train.column("key").to_pylist(), train.column("start").to_pylist()))}
    plain, rank0_codebook = [], []
    for record in records:  # rank 0 first
        assert len(record["windows"]) == cfg.data.batch_size // 2
        rows = train.take([where[tuple(w)] for w in record["windows"]])
        torch.manual_seed(cfg.run.seed)  # the loop's initial weights
        model = AEMGModel(cfg.model).train()
        quantizer = model.tokenizer.quantizer
        kmeans_init = quantizer._kmeans_init

        def broadcast_init(vectors, quantizer=quantizer, kmeans_init=kmeans_init):
            kmeans_init(vectors)
            if rank0_codebook:
                quantizer.codebook.copy_(rank0_codebook[0])
            else:
                rank0_codebook.append(quantizer.codebook.clone())

        quantizer._kmeans_init = broadcast_init
        torch.manual_seed(zlib.crc32(f"{cfg.run.seed}/{record['rank']}/0".encode()))
        with torch.no_grad():
            plain.append(float(model(collate(rows, cfg.data.max_tokens))["loss"]))
    np.testing.assert_allclose([r["loss"] for r in records], plain, rtol=1e-5)
    np.testing.assert_allclose(np.mean([r["loss"] for r in records]), np.mean(plain), rtol=1e-5)  # the global batch
    assert _metrics(run)[0]["step"] == 1 and _metrics(run)[0]["loss"] == pytest.approx(records[0]["loss"], rel=1e-6)


def _check_export_is_the_trained_model(run, checkpoint, cfg):
    """The exported model (written after the last step, ZeRO-3 gathering its partitions) gives identical outputs to
    the trained weights as DeepSpeed's own checkpoint of that step holds them (its fp32 partitions merged offline)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from aemg_dist.model import AEMGModel

    trained = AEMGModel(cfg.model)
    state = get_fp32_state_dict_from_zero_checkpoint(checkpoint, tag="state")
    trained.load_state_dict(state, strict=False)  # parameters and buffers: check nothing trained is missing
    assert {n for n, p in trained.named_parameters() if p.requires_grad} <= set(state)
    exported = load_inference(run / "export")
    assert not torch.equal(next(exported.parameters()), next(AEMGModel(cfg.model).parameters()))  # it trained
    train, _ = split_tables(cfg.data)
    batch = collate(train.slice(0, 8), cfg.data.max_tokens)
    trained.eval(), exported.eval()
    with torch.no_grad():
        a, b = trained.encode(batch)[0], exported.encode(batch)[0]
    assert torch.equal(a, b)


@pytest.mark.claim("dist.max_failures retries a failed worker from the latest checkpoint")
def test_ray_train_deepspeed_recovers_from_a_worker_failure(tokens, tmp_path, ray_local):
    cfg = _config(tokens, tmp_path, "optim.max_steps=30", "run.checkpoint_every=10", "run.fail_at_step=15",
                  "run.log_every=1")
    result = pretrain(cfg)
    assert (tmp_path / ".fault_injected").exists()  # the failure happened...
    assert result.steps == 30 and result.checkpoint  # ...and the retried run finished from a checkpoint
    steps = [r["step"] for r in _metrics(tmp_path)]
    # rows up to the failure, then the retry from step 10: 11-15 are logged again, nothing before 10 is
    assert steps == [*range(1, 16), *range(11, 31)]
    assert load_inference(tmp_path / "export") is not None
    # ZeRO-0: the first step is the plain model's, and every rank holds the whole model
    assert len(list(tokens.glob("*.parquet"))) == 1
    _check_first_step_matches_the_plain_model(tokens, tmp_path, cfg, shared_reader=True)
    assert all(r["params_held"] == r["params_full"] == param_count(cfg.model) for r in _first_steps(tmp_path))


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stages_run_with_two_workers(tokens_in_parts, tmp_path, ray_local, stage, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative run.out must reach the workers as the driver's folder
    tokens = tokens_in_parts
    cfg = _config(tokens, "run", "optim.max_steps=10", "run.checkpoint_every=10", f"dist.zero_stage={stage}",
                  "run.log_every=1")
    result = pretrain(cfg)
    run = tmp_path / "run"
    rows = _metrics(run)
    assert result.steps == 10 and np.isfinite(rows[-1]["loss"])
    _check_first_step_matches_the_plain_model(tokens, run, cfg)
    # ZeRO-3 partitions the parameters: each of the 2 ranks holds about half (padding aside); ZeRO-2 only the
    # gradients and optimizer state, so each holds the whole model
    full = param_count(cfg.model)
    held = [r["params_held"] for r in _first_steps(run)]
    assert all(r["params_full"] == full for r in _first_steps(run))
    if stage == 3:
        assert all(0.45 * full <= h <= 0.55 * full for h in held) and sum(held) >= full, (held, full)
    else:
        assert held == [full, full]
    _check_export_is_the_trained_model(run, result.checkpoint, cfg)


def test_token_features_are_checked_against_the_model_before_anything_is_written(tokens, tmp_path):
    # an explicit model.n_features wins over the tokens' and is refused when it does not fit them
    with pytest.raises(ConfigError, match="holds tokens of 32 features; set model.n_features=32 .it is 30. or leave "
                                          "it unset to take it from tokens.json"):
        pretrain(_config(tokens, tmp_path / "a", "dist.ray=false", "model.n_features=30"))
    with pytest.raises(ConfigError, match=r"not log amplitudes; set model.gain_features=\[16, 17, 18\]"):
        pretrain(_config(tokens, tmp_path / "b", "dist.ray=false", "model.contrast_weight=1.0",
                         "model.gain_features=[0,1]"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_non_default_tokenizer_pretrains_without_model_overrides(tokens, tmp_path):
    """n_features and the log-amplitude columns come from the token folder's tokens.json (8 envelope points and 8
    bands: 28 features, log_peak at 8 rather than 16), so only the tokenizer was configured."""
    other = tmp_path / "tokens"
    tokenize_corpus(tokens.parent / "corpus.zarr", other,
                    TokenizeConfig(tokens=TokenConfig(n_envelope_points=8, n_bands=8)), workers=1, progress=False)
    cfg = _config(other, tmp_path / "run", "dist.ray=false", "optim.max_steps=3", "model.contrast_weight=1.0")
    assert (cfg.model.n_features, cfg.model.gain_features) == (28, [8, 9, 10])
    result = pretrain(cfg)
    assert result.steps == 3 and load_inference(result.export).cfg.n_features == 28


def test_extra_token_folders_are_pretrained_on_and_counted_as_seen(tokens, extra_corpus, tmp_path):
    """data.extra_tokens (e.g. a synthetic corpus beside the real one): pretraining reads it, the evaluation's guard
    counts its subjects as seen (minus the exclusions), and a folder tokenized otherwise is refused before anything
    is written."""
    from aemg_dist.evaluation.runner import Checkpoint

    extra = tmp_path / "extra-tokens"
    tokenize_corpus(extra_corpus, extra, workers=1, progress=False)
    cfg = _config(tokens, tmp_path / "run", "dist.ray=false", "optim.max_steps=3", f"data.extra_tokens=[{extra}]",
                  "data.exclude_subjects=[synth_extra/s02]")
    assert pretrain(cfg).steps == 3
    seen = Checkpoint.from_run(tmp_path / "run").seen
    assert ("synth_extra", "s01") in seen and ("synth_extra", "s02") not in seen and ("synth_myo", "s01") in seen
    other = tmp_path / "other-tokens"
    tokenize_corpus(extra_corpus, other, TokenizeConfig(tokens=TokenConfig(n_bands=8)), workers=1, progress=False)
    with pytest.raises(ConfigError, match=f"data.extra_tokens {other} was tokenized with other settings"):
        pretrain(_config(tokens, tmp_path / "refused", "dist.ray=false", f"data.extra_tokens=[{other}]"))
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_batches_reach_the_device_with_their_values(device):
    """On a GPU through pinned memory without waiting for the stream; the values arrive all the same."""
    batch = {"features": torch.randn(4, 8, 32), "channel": torch.arange(32).reshape(4, 8)}
    moved = to_device(batch, torch.device(device), torch.bfloat16)
    assert {t.device.type for t in moved.values()} == {device}
    assert moved["features"].dtype == torch.bfloat16 and moved["channel"].dtype == torch.long
    assert torch.equal(moved["features"].cpu(), batch["features"].to(torch.bfloat16))
    assert torch.equal(moved["channel"].cpu(), batch["channel"])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_the_plain_loop_trains_on_its_device_in_bf16_autocast_close_to_fp32(tokens, tmp_path, device):
    """--no-ray's stepper: model and batches on the device (by default the GPU when there is one), weights fp32;
    under bf16 autocast two steps track fp32 within 3 % and really lower the precision; auto is bf16 autocast on a
    GPU, fp32 on CPU; bf16 weights (DeepSpeed's) are refused without Ray, with the way to bf16 named."""
    from aemg_dist.model import AEMGModel
    from aemg_dist.train import PlainStepper

    train, _ = split_tables(_config(tokens, tmp_path, "dist.ray=false").data)
    losses = {}
    for precision in ("fp32", "bf16-autocast"):
        cfg = _config(tokens, tmp_path / precision, "dist.ray=false", f"dist.precision={precision}")
        torch.manual_seed(0)
        stepper = PlainStepper(AEMGModel(cfg.model), cfg, device=torch.device(device))
        assert stepper.device.type == device and {p.dtype for p in stepper.model.parameters()} == {torch.float32}
        batch = stepper.prepare(collate(train.slice(0, 16), cfg.data.max_tokens))
        assert {t.device.type for t in batch.values()} == {device}
        losses[precision] = []
        for step in range(2):
            torch.manual_seed(step)  # the same masks in both precisions
            out = stepper.forward(batch)
            stepper.step(out["loss"])
            losses[precision].append(float(out["loss"]))
    np.testing.assert_allclose(losses["bf16-autocast"], losses["fp32"], rtol=0.03)
    assert losses["bf16-autocast"] != losses["fp32"]
    cfg = _config(tokens, tmp_path / "auto", "dist.ray=false")
    default = PlainStepper(AEMGModel(cfg.model), cfg)
    assert default.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert default.precision == ("bf16-autocast" if torch.cuda.is_available() else "fp32")
    with pytest.raises(ValueError, match="dist.precision=bf16-autocast"):
        _config(tokens, tmp_path / "bf16", "dist.ray=false", "dist.precision=bf16")


def test_bf16_through_the_deepspeed_engine_on_cpu_tracks_fp32(tokens, tmp_path, monkeypatch):
    """The GPU configurations (DeepSpeed bf16, and fp32 parameters under bf16 autocast; the forward through the
    engine; torch AdamW's fused kernel, the default on a GPU) run on CPU: two steps on the same batch give finite
    losses within 3 % of the fp32 engine's (bf16 keeps 8 bits of mantissa: ~0.4 % per value), and the fused optimizer
    steps as the unfused one does."""
    import socket

    from aemg_dist.model import AEMGModel
    from aemg_dist.train import DeepSpeedStepper

    with socket.socket() as s:  # a free port for the single-rank gloo group, on the loopback only
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                        "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    train, _ = split_tables(_config(tokens, tmp_path, "dist.ray=false").data)
    losses = {}
    for precision, implementation in (("fp32", "auto"), ("bf16", "auto"), ("bf16-autocast", "auto"),
                                      ("bf16", "fused"), ("fp32", "fused")):
        cfg = _config(tokens, tmp_path / f"{precision}-{implementation}", f"dist.precision={precision}",
                      "dist.num_workers=1", "data.batch_size=16", f"optim.implementation={implementation}")
        torch.manual_seed(0)
        stepper = DeepSpeedStepper(AEMGModel(cfg.model), cfg, world_size=1)
        # DeepSpeed bf16 holds bf16 parameters and batches; autocast keeps both float32 and lowers the matmuls
        assert stepper.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
        assert {p.dtype for p in stepper.model.tokenizer.encoder.parameters()} == {stepper.dtype}
        # auto is torch's for-loop on CPU; DeepSpeed's bf16 wrapper keeps the torch optimizer inside it
        assert stepper.optimizer_implementation == ("fused" if implementation == "fused" else "for-loop")
        batch = stepper.prepare(collate(train.slice(0, 16), cfg.data.max_tokens))
        losses[precision, implementation] = []
        for step in range(2):
            torch.manual_seed(step)  # the same masks in both precisions
            out = stepper.forward(batch)
            stepper.step(out["loss"])
            losses[precision, implementation].append(float(out["loss"]))
    for precision in ("bf16", "bf16-autocast"):
        assert np.isfinite(losses[precision, "auto"]).all()
        np.testing.assert_allclose(losses[precision, "auto"], losses["fp32", "auto"], rtol=0.03)
    assert losses["bf16-autocast", "auto"] != losses["fp32", "auto"]  # the autocast really lowered the precision
    # the fused kernel computes the same AdamW update: the second step's loss (after one update) agrees
    np.testing.assert_allclose(losses["fp32", "fused"], losses["fp32", "auto"], rtol=1e-5)
    np.testing.assert_allclose(losses["bf16", "fused"], losses["bf16", "auto"], rtol=1e-3)


def test_the_gpu_benchmark_runs_on_cpu_at_tiny_size(tmp_path):
    """benchmarks/gpu.sh at tiny size on CPU (what CI can run): one row per configuration, a finite step time,
    tokens/s = batch x tokens / step time, and no MFU without a known peak."""
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PRESETS": "tiny", "ZERO": "0", "COMPILE": "off", "PRECISION": "auto,bf16-autocast",
           "OPTIMIZER": "auto,fused", "BATCH": "8", "STEPS": "2", "WARM": "1", "OUT": str(tmp_path),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(repo / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "gpu.json").read_text())
    assert [row.get("error") for row in rows] == [None] * 4, rows
    # auto is fp32 and torch's for-loop AdamW on CPU
    assert [(row["precision"], row["optimizer"]) for row in rows] == [
        ("fp32", "for-loop"), ("fp32", "fused"), ("bf16-autocast", "for-loop"), ("bf16-autocast", "fused")]
    for row in rows:
        assert row["batch"] == 8 and row["mfu"] is None and np.isfinite(row["step_s"]) and np.isfinite(row["loss"])
        assert row["tokens_per_s"] == pytest.approx(row["batch"] * row["tokens"] / row["step_s"])
    table = (tmp_path / "gpu.md").read_text()
    assert "| tiny | 0 | off | fp32 | for-loop |" in table and "| tiny | 0 | off | bf16-autocast | fused |" in table
    # --profile: where one configuration's step goes, counted per step on the first line
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_gpu.py"), "--one", "tiny,0,off,fp32",
                           "--batch", "4", "--steps", "1", "--warm", "1", "--profile", str(tmp_path / "prof.txt")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    first = (tmp_path / "prof.txt").read_text().splitlines()[0]
    ops, reads = (int(n) for n in re.match(r"per step: (\d+) aten ops, (\d+) host reads", first).groups())
    assert ops > 100 and 0 < reads < ops
