"""`aemg pretrain`: self-supervised pretraining on token shards with Ray Train + DeepSpeed.

One training loop (`train_loop`) serves both paths, and neither holds the token table: the split into
training and validation recordings comes from the token folder's manifest (shards.py), and the rows
are read from the part files as they are needed.
- Ray (default): a `TorchTrainer` starts `dist.num_workers` workers; each streams its share of
  the token shards through its own Ray Data dataset (`ray.data.read_parquet` over the files the rank
  reads epoch after epoch, the training recordings' filter in the scan, a local shuffle buffer),
  wraps the model in `deepspeed.initialize`
  (ZeRO stage from config; bf16 on GPU, fp32 on CPU with a torch AdamW, so no compiled ops),
  checkpoints every `run.checkpoint_every` steps on all ranks through `ray.train.report`, resumes
  from the latest checkpoint automatically, and is retried `dist.max_failures` times.
- `--no-ray`: the same loop in this process with plain torch (for debugging and as the baseline
  of the distributed overhead benchmark), reading the part files with `shards.stream_batches`.

The run folder (`run.out`) holds the resolved `config.yaml`, `metrics.csv`, TensorBoard events,
`loss.png` / `codebook.png`, Ray Train's checkpoints (`ray/`), `workers/rank-R.json` (node, process
and start step of each rank), `workers/first-step-rank-R.json` (each rank's first batch, its loss and the parameter
elements the rank holds) and the exported inference checkpoint (`export/`: safetensors + config.json);
artifacts.py names them for the stages that read a run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import socket
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch
from omegaconf import OmegaConf

from aemg_dist import storage
from aemg_dist.artifacts import (LOCAL_CHECKPOINT, RAY_RUN, RUN_CONFIG, RUN_EXPORT, RUN_METRICS, RUN_WORKERS,
                                 TOKENIZE_CONFIG, TOKENS_MANIFEST, last_metrics, load_tokenize_config, model_preset,
                                 read_tokens_manifest, table_to_windows)
from aemg_dist.config import (ConfigError, check_ranges, config_from_dict, config_layer, dotted, load_config,
                              save_config)
from aemg_dist.shards import (ShardSplit, count_rows, rank_files, read_rows, split_recordings, stream_batches,
                              validation_rows)
from aemg_dist.model import AEMGModel, ModelConfig, batch_to_torch
from aemg_dist.model.export import check_inference, export_inference, load_inference
from aemg_dist.tokens import TokenBatch
from aemg_dist.validate import claim, require_output

METRICS = ("loss", "recon_loss", "commit_loss", "mtm_loss", "mtm_accuracy", "feature_loss", "contrast_loss",
           "codebook_usage", "perplexity", "lr")


@dataclass
class DataConfig:
    tokens: str = "runs/demo/tokens"  # output folder of `aemg tokenize` (chunks)
    # more `aemg tokenize` folders read beside `tokens` (e.g. a synthetic corpus's tokens as extra unlabeled data),
    # tokenized with the same settings; the exclusions and the validation split apply to every folder
    extra_tokens: list[str] = field(default_factory=list)
    batch_size: int = 32  # global batch, in windows
    max_tokens: int = 256  # per window; longer windows keep their earliest groups
    exclude_subjects: list[str] = field(default_factory=list)  # "dataset/subject" never seen (LOSO folds)
    exclude_datasets: list[str] = field(default_factory=list)  # datasets never seen (leave-one-dataset-out)
    val_fraction: float = 0.1  # recordings held out for the validation loss (chosen by a hash of the key)
    shuffle_buffer: int = 4096  # rows mixed before batches are drawn (part files hold one recording's rows in order)
    # object store memory each rank's reader may fill ahead of training (Ray Data's backpressure). Unbounded, a
    # reader ran ahead through the whole epoch's files while the model trained, and its memory grew with the
    # corpus (0.41 -> 0.88 GB at 4x the large synthetic scale); at 256 the large scale's steps took 4x as long
    # (the reader starved), at 1024 as long as unbounded (benchmarks/RESULTS.md)
    read_ahead_mb: int = 1024

    def __post_init__(self) -> None:
        # attention memory grows with batch x max_tokens^2: beyond these a step cannot fit any machine
        check_ranges(self, batch_size="[1, 65536]", max_tokens="[1, 16384]", val_fraction="[0, 1)",
                     shuffle_buffer="[1, 16777216]", read_ahead_mb="[16, 1048576]")

    @property
    def token_folders(self) -> list[str]:
        return [self.tokens, *self.extra_tokens]


OPTIMIZER_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for-loop")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 20
    max_steps: int = 300
    grad_clip: float = 1.0
    # torch AdamW's implementation: auto = fused on a GPU (a handful of multi-tensor kernels per step instead of
    # several per parameter: the step there is bound by kernel launches), torch's default elsewhere (on CPU the fused
    # kernel still visits each parameter, and the recorded CPU results were measured without it)
    implementation: str = "auto"

    def __post_init__(self) -> None:
        check_ranges(self, lr="(0, 1]", min_lr_ratio="[0, 1]", weight_decay="[0, inf)", beta1="[0, 1)",
                     beta2="[0, 1)", warmup_steps="[0, inf)", max_steps="[1, inf)", grad_clip="(0, inf)")
        if self.implementation not in OPTIMIZER_IMPLEMENTATIONS:
            raise ValueError(f"optim.implementation must be one of {', '.join(OPTIMIZER_IMPLEMENTATIONS)}, "
                             f"got {self.implementation!r}")

    def adamw_options(self) -> dict[str, bool]:
        """torch.optim.AdamW's fused/foreach arguments for this implementation (none: torch's own choice)."""
        if self.implementation == "auto":
            return {"fused": True} if torch.cuda.is_available() else {}
        options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}
        return options[self.implementation]


@dataclass
class RunConfig:
    out: str = "runs/pretrain"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    val_every: int = 100
    val_batches: int = 4
    init_from: str = ""  # an exported checkpoint to start from (stage 2 of two-stage training)
    fail_at_step: int = -1  # fault injection for tests: rank 1 (or 0 alone) raises once at this step

    def __post_init__(self) -> None:
        check_ranges(self, seed="[0, inf)", log_every="[1, inf)", checkpoint_every="[1, inf)", val_every="[1, inf)",
                     val_batches="[1, inf)", fail_at_step="[-1, inf)")


PRECISIONS = ("auto", "fp32", "bf16", "bf16-autocast")


@dataclass
class DistConfig:
    ray: bool = True
    num_workers: int = 2
    zero_stage: int = 0
    # auto = bf16 on GPU, fp32 on CPU. bf16: DeepSpeed's bf16 parameters (its unfused bf16 optimizer wrapper checks
    # each parameter for overflow, a host sync per parameter per step); bf16-autocast: fp32 parameters and optimizer,
    # the forward under torch.autocast(bf16) (DeepSpeed's torch_autocast), a few host syncs per step
    precision: str = "auto"
    max_failures: int = 1
    address: str = ""
    cpus_per_worker: int = 1

    def __post_init__(self) -> None:
        check_ranges(self, num_workers="[1, 4096]", zero_stage="[0, 3]", max_failures="[-1, inf)",
                     cpus_per_worker="[1, inf)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"dist.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass
class PretrainConfig:
    preset: str = "tiny"  # configs/model/<preset>.yaml; `model.*` keys override it
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self) -> None:
        if not self.dist.ray and self.dist.precision == "bf16":
            raise ValueError("dist.precision=bf16 (bf16 weights) needs DeepSpeed; without Ray, train in bf16 with "
                             "dist.precision=bf16-autocast (fp32 weights, bf16 matmuls)")
        if self.dist.ray and self.data.batch_size % self.dist.num_workers:
            raise ValueError(f"data.batch_size {self.data.batch_size} must be divisible by dist.num_workers "
                             f"{self.dist.num_workers}")


# what may change when a run is continued (its config.yaml is rewritten with them); anything else would make the
# checkpoints fail to load, or the run a mix of two trainings that its config.yaml does not describe
RESUMABLE_KEYS = ("optim.max_steps", "run.log_every", "run.val_every", "run.val_batches", "run.checkpoint_every",
                  "run.fail_at_step", "dist.address", "dist.max_failures", "dist.cpus_per_worker")


def load_pretrain_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Defaults < model preset < the token folder's features < YAML file < key=value overrides; validated before
    anything starts.

    The model reads as many features as the tokens carry: when `data.tokens` is a local folder that already holds a
    finished tokenization, `model.n_features` and `model.gain_features` (the log amplitudes a channel gain shifts)
    come from its tokens.json, so a tokenizer with other settings needs no model override; one set in the file or
    the overrides still wins (and `pretrain` refuses it if it does not fit the tokens). A token folder on object
    storage is not read here (loading a config stays offline, e.g. to check a cluster job's command); `pretrain`
    checks it and names the values to set."""
    layers: list[Any] = [{"model": model_preset(_setting("preset", path, overrides, PretrainConfig.preset))},
                         *([path] if path else [])]  # the preset: the lowest layer
    tokens = _setting("data.tokens", path, overrides, DataConfig.tokens)
    if not storage.is_uri(tokens) and storage.exists(storage.join(tokens, TOKENS_MANIFEST)):
        layers.insert(1, {"model": token_features(read_tokens_manifest(tokens, "data.tokens")["feature_names"])})
    return load_config(PretrainConfig, layers, overrides)


def _setting(key: str, path: str | Path | None, overrides: Sequence[str], default: str) -> str:
    """One setting as the layers above the defaults give it (the last override, else the file), before the config
    is built: it decides which layers there are."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")]
    return str(given[-1] if given else (OmegaConf.select(config_layer(path), key) if path else None) or default)


# ---------------------------------------------------------------- data

GAIN_FEATURES = ("log_peak", "log_rms", "log_snr")  # the token features a channel gain shifts


def token_features(names: Sequence[str]) -> dict[str, Any]:
    """The model settings that follow from the tokens' feature names: how many features, and where the log
    amplitudes are (what the view augmentation's channel gain shifts)."""
    return {"n_features": len(names), "gain_features": [names.index(n) for n in GAIN_FEATURES if n in names]}


def check_token_features(cfg: PretrainConfig) -> None:
    """The model reads as many features as the tokens carry, and the view augmentation's gain columns are the
    log amplitudes (ConfigError naming the token folder otherwise); every folder of data.extra_tokens was tokenized
    with data.tokens' settings (one tokenizer goes with the exported model); before anything is written. The folders
    must hold finished tokenizations."""
    names = read_tokens_manifest(cfg.data.tokens, "data.tokens")["feature_names"]
    settings = _token_meaning(cfg.data.tokens) if cfg.data.extra_tokens else None  # read only to compare
    for extra in cfg.data.extra_tokens:
        other = read_tokens_manifest(extra, "data.extra_tokens")["feature_names"]
        if other != names or _token_meaning(extra) != settings:
            raise ConfigError(f"data.extra_tokens {extra} was tokenized with other settings than data.tokens "
                              f"{cfg.data.tokens} ({len(other)} features against {len(names)}; compare their "
                              f"{TOKENIZE_CONFIG}); tokenize it with the same `aemg tokenize` overrides")
    if len(names) != cfg.model.n_features:
        raise ConfigError(f"{cfg.data.tokens} holds tokens of {len(names)} features; set model.n_features={len(names)} "
                          f"(it is {cfg.model.n_features}) or leave it unset to take it from {TOKENS_MANIFEST}")
    if cfg.model.contrast_weight > 0 and any(names[i] not in GAIN_FEATURES for i in cfg.model.gain_features):
        raise ConfigError(f"model.gain_features={cfg.model.gain_features} are {[names[i] for i in cfg.model.gain_features]} "
                          f"in {cfg.data.tokens}, not log amplitudes; set model.gain_features="
                          f"{token_features(names)['gain_features']}")


def recording_split(cfg: DataConfig) -> ShardSplit:
    """The training and validation recordings of the token folders, from their manifests; ConfigError when the
    exclusions leave nothing to train on or not one full batch (the batch iterator could never yield)."""
    split = split_recordings(cfg.token_folders, cfg.exclude_subjects, cfg.exclude_datasets, cfg.val_fraction)
    rows = count_rows(split, split.train_keys, at_most=cfg.batch_size)  # stops reading once a batch is there
    if rows == 0:
        raise ConfigError(f"no training windows left in {split.folder} after the exclusions (data.exclude_subjects, "
                          "data.exclude_datasets, data.val_fraction)")
    if rows < cfg.batch_size:
        raise ConfigError(f"data.batch_size={cfg.batch_size} is more than the {rows} training windows in "
                          f"{split.folder}; lower data.batch_size")
    return split


def split_tables(cfg: DataConfig, columns: Sequence[str] | None = None) -> tuple[pa.Table, pa.Table]:
    """(train, validation) token rows after the exclusions, whole (for inspection and tests; training streams)."""
    split = recording_split(cfg)
    return tuple(pa.concat_tables([read_rows(path, keys, columns) for path in split.files])
                 for keys in (split.train_keys, split.val_keys))


def collate(rows: pa.Table, max_tokens: int) -> dict[str, torch.Tensor]:
    return batch_to_torch(TokenBatch.collate(table_to_windows(rows), max_tokens=max_tokens))


def input_readers(n_files: int, world: int) -> int:
    """How many Ray Data readers feed `world` ranks: one per rank when every rank can read whole part files of its
    own, else one that all ranks share (a small token folder: fewer part files than ranks)."""
    return world if n_files >= world else 1


def reader_dataset_name(reader: int) -> str:
    return f"train-reader-{reader}"


def ray_batches(rank: int, world: int, readers: int, micro_batch: int, seed: int,
                shuffle_buffer: int) -> Iterator[pa.Table]:
    """This rank's training batches forever, from its reader's Ray Data dataset (`reader_datasets`); after the
    epochs that dataset lists, it is read again. Ranks that share a reader draw the same batches of
    `world // readers` micro-batches, in the same order (one read task at a time, the same shuffle seed), and each
    keeps its own slice."""
    import ray.train

    reader, share = rank % readers, world // readers
    shard = ray.train.get_dataset_shard(reader_dataset_name(reader))
    execution = 0
    while True:
        for batch in shard.iter_batches(batch_size=micro_batch * share, batch_format="pyarrow", drop_last=True,
                                        local_shuffle_buffer_size=shuffle_buffer,
                                        local_shuffle_seed=seed + reader + 1000 * execution):
            yield batch.slice(rank // readers * micro_batch, micro_batch)
        execution += 1


# Most part files one reader's dataset lists (its files repeated for the epochs of the run): bounds the read plan
MAX_FILES_PER_EXECUTION = 4096


def reader_datasets(split: ShardSplit, seed: int, readers: int, rows_needed: int) -> dict[str, Any]:
    """One Ray Data dataset per reader, named `reader_dataset_name(reader)`: the part files that reader reads in
    each epoch (`shards.rank_files`, as `--no-ray` reads them), listed for as many epochs as the run needs
    (`rows_needed` rows in all), read with the training recordings' filter pushed into the Parquet scan.

    Each reader runs its own execution in its rank's process, once for the run: a Ray Data execution's start-up
    (new read tasks, their worker processes) costs seconds, and a dataset split across the ranks
    (`streaming_split`) starts one per epoch behind a barrier of all ranks; the demo's tiny model then
    stalled 10-17 s every ~55 steps (3.6x plain torch's time per sample; benchmarks/RESULTS.md)."""
    import ray.data
    from ray.data.expressions import col

    fs, _ = storage.filesystem(split.files[0])
    epochs = max(1, min(math.ceil(rows_needed / max(1, split.train_rows)),
                        MAX_FILES_PER_EXECUTION * readers // len(split.files)))
    # Ray Train leaves Ray Data no CPU of what the training workers hold: on a cluster whose CPUs they hold
    # all (2 workers on 2 cores) a read task that needs a CPU never runs. The read and the filter are I/O
    # light, so they ask for none; the V1 Parquet read takes that for all of its tasks, while the V2 path's
    # file-listing task always asks for a CPU (Ray 2.60). The dataset keeps the DataContext it was made with.
    # Building it samples one file in a 1-CPU task: here on the driver, before the workers take the CPUs.
    context = ray.data.DataContext.get_current()
    v2, context.use_datasource_v2 = context.use_datasource_v2, False
    datasets = {}
    try:
        for reader in range(readers):
            paths = [storage.filesystem(p)[1] for epoch in range(epochs)
                     for p in rank_files(split, seed, epoch, reader, readers)]
            # one read task at a time: the order ranks sharing a reader rely on, and CPU-free tasks would
            # otherwise all start at once, each in a new worker process, beside the training workers
            dataset = ray.data.read_parquet(paths, filesystem=fs, num_cpus=0, concurrency=1)
            datasets[reader_dataset_name(reader)] = dataset.filter(expr=col("key").is_in(sorted(split.train_keys)),
                                                                   num_cpus=0)
    finally:
        context.use_datasource_v2 = v2
    return datasets


def ingest_options(read_ahead_mb: int) -> Any:
    """Ray Train's default ingest options (carried over from the driver's DataContext), with each reader's
    execution allowed `read_ahead_mb` of the object store: the blocks it may hold before training takes them."""
    from ray.train import DataConfig as RayDataConfig

    options = RayDataConfig.default_ingest_options()
    options.resource_limits = options.resource_limits.copy(object_store_memory=read_ahead_mb * 2**20)
    return options


# ---------------------------------------------------------------- optimisation

def lr_lambda(cfg: OptimConfig):
    """Linear warmup then cosine decay to min_lr_ratio, as a multiplier of cfg.lr."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def _token_settings(tokens: str) -> dict | None:
    """The resolved tokenize.yaml of the pretraining's token folder, as plain values for the export (None without one:
    shards written by hand)."""
    path = storage.join(tokens, TOKENIZE_CONFIG)
    return json.loads(json.dumps(asdict(load_tokenize_config(path)))) if storage.exists(path) else None


def _token_meaning(tokens: str) -> dict | None:
    """The settings that decide what a token folder's rows are (events, tokens, windows), not how they were written
    (shard and task lengths)."""
    settings = _token_settings(tokens)
    return {key: settings[key] for key in ("events", "tokens", "windows")} if settings else None


class PlainStepper:
    """Backward/step/checkpoint with plain torch (the --no-ray path), on the GPU when there is one."""

    def __init__(self, model: AEMGModel, cfg: PretrainConfig, device: torch.device | None = None):
        """`device`: where the model trains (default: the GPU when torch sees one, else the CPU). Precision: fp32
        parameters; auto = bf16 autocast on a GPU, fp32 on CPU (the DeepSpeed path's choices, without bf16 weights)."""
        if device is None:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(device)
        self.precision = cfg.dist.precision
        if self.precision == "auto":
            self.precision = "bf16-autocast" if device.type == "cuda" else "fp32"
        self.dtype = torch.float32
        self.optimizer = torch.optim.AdamW(model.param_groups(cfg.optim.weight_decay), lr=cfg.optim.lr,
                                           betas=(cfg.optim.beta1, cfg.optim.beta2), **cfg.optim.adamw_options())
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg.optim))
        self.grad_clip = cfg.optim.grad_clip

    def step(self, loss: torch.Tensor) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    @property
    def optimizer_implementation(self) -> str:
        """fused, foreach or for-loop: how the torch AdamW steps (inside DeepSpeed's wrapper, if any)."""
        group = getattr(self.optimizer, "optimizer", self.optimizer).param_groups[0]
        if group.get("fused"):
            return "fused"
        if group.get("foreach") is None:  # torch's own choice: foreach when the parameters are on a GPU
            return "foreach" if self.device.type == "cuda" else "for-loop"
        return "foreach" if group["foreach"] else "for-loop"

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch on the model's device (and precision, for DeepSpeed bf16)."""
        return to_device(batch, self.device, self.dtype)

    def forward(self, batch: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        """The model's losses on one prepared batch (under bf16 autocast if that is the precision)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16-autocast"):
            return self.model(batch, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def export(self, folder: Path, model_cfg: ModelConfig, rank: int, tokenize: dict | None = None) -> None:
        if rank == 0:
            export_inference(self.model, model_cfg, folder, tokenize)

    def save(self, folder: str, step: int) -> None:
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "step": step}, Path(folder) / "state.pt")

    def load(self, folder: str) -> int:
        # tensors and plain containers only; read to the CPU, so a GPU run's checkpoint also resumes without one
        # (load_state_dict copies to the parameters' device)
        state = torch.load(Path(folder) / "state.pt", weights_only=True, map_location="cpu")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return int(state["step"])


class DeepSpeedStepper(PlainStepper):
    """The same interface around a DeepSpeed engine (ZeRO stage, precision and clipping from config)."""

    def __init__(self, model: AEMGModel, cfg: PretrainConfig, world_size: int):
        import deepspeed

        super().__init__(model, cfg, device=next(model.parameters()).device)  # the engine places the model
        if cfg.dist.precision == "auto":
            self.precision = "bf16" if torch.cuda.is_available() else "fp32"
        bf16 = self.precision == "bf16"
        ds_config = {
            "train_batch_size": cfg.data.batch_size,
            "train_micro_batch_size_per_gpu": cfg.data.batch_size // world_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": cfg.optim.grad_clip,
            "zero_optimization": {"stage": cfg.dist.zero_stage},
            "bf16": {"enabled": bf16},
            "steps_per_print": 10**9,
        }
        if bf16:  # DeepSpeed 0.19 casts only the parameters by default; the model's float buffers (time and
            # Fourier frequencies) meet bf16 inputs, so they are cast too (the quantizer is set back below)
            ds_config["data_types"] = {"buffer_dtype": "bf16"}
        if self.precision == "bf16-autocast":  # parameters, gradients and batches stay float32
            ds_config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=self.optimizer, lr_scheduler=self.scheduler, config=ds_config)
        self.model = self.engine.module
        self.zero_stage = cfg.dist.zero_stage
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        self.model.tokenizer.quantizer.float()  # EMA codebook statistics stay float32 under bf16

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return to_device(batch, self.engine.device, self.dtype)

    def forward(self, batch: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        # through the engine, as on a GPU: its hooks (ZeRO-3 gathers, timers, bf16 casts) run around the module
        return self.engine(batch, **kwargs)

    def export(self, folder: Path, model_cfg: ModelConfig, rank: int, tokenize: dict | None = None) -> None:
        import deepspeed

        if self.zero_stage < 3:
            return super().export(folder, model_cfg, rank, tokenize)
        # ZeRO-3 holds one partition per rank: gather the full weights (a collective) before saving
        with deepspeed.zero.GatheredParameters(list(self.model.parameters())):
            super().export(folder, model_cfg, rank, tokenize)

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()  # clips, steps the optimizer and the LR schedule, zeroes gradients

    def save(self, folder: str, step: int) -> None:
        self.engine.save_checkpoint(folder, tag="state", client_state={"step": step})

    def load(self, folder: str) -> int:
        # DeepSpeed checkpoints are written by this run's own workers (trusted); exported models use safetensors
        _, client = self.engine.load_checkpoint(folder, tag="state")
        return int(client["step"])


# ---------------------------------------------------------------- the loop

def train_loop(loop_config: dict[str, Any]) -> None:
    """Train for cfg.optim.max_steps steps; runs in every Ray Train worker, or once with --no-ray."""
    cfg = config_from_dict(PretrainConfig, loop_config["config"])
    distributed = cfg.dist.ray
    if distributed:
        import ray.train

        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
    else:
        rank, world = 0, 1
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    model = AEMGModel(cfg.model)
    if cfg.run.init_from:
        model.load_state_dict(load_inference(storage.local_copy(cfg.run.init_from)).state_dict())
    stepper = DeepSpeedStepper(model, cfg, world) if distributed else PlainStepper(model, cfg)
    start_step = _resume(stepper) if distributed else _resume_local(stepper, cfg)
    _record_worker(cfg.run.out, rank, start_step, distributed)
    micro_batch = cfg.data.batch_size // world
    split = recording_split(cfg.data)  # from the manifest: every rank reads its rows itself
    val = validation_rows(split, cfg.data.batch_size * cfg.run.val_batches)
    if distributed:
        batches = ray_batches(rank, world, input_readers(len(split.files), world), micro_batch, cfg.run.seed,
                              cfg.data.shuffle_buffer)
    else:
        batches = stream_batches(split, micro_batch, cfg.run.seed,
                                 buffer_batches=max(1, cfg.data.shuffle_buffer // micro_batch), skip=start_step)
    files = storage.StagedFolder(cfg.run.out)
    if rank == 0:
        files.fetch(RUN_METRICS)  # a resumed run appends to the rows of the earlier attempts
    log = MetricsLog(files.local, enabled=rank == 0)
    started = time.perf_counter()
    for step in range(start_step, cfg.optim.max_steps):
        if step == cfg.run.fail_at_step and rank == min(1, world - 1):
            _fail_once(cfg.run.out)
        # every random draw of a step (masks, code restarts) depends on (seed, rank, step) only, so a
        # resumed run repeats exactly what the uninterrupted one would have done
        torch.manual_seed(zlib.crc32(f"{cfg.run.seed}/{rank}/{step}".encode()))
        model.train()
        rows = next(batches)
        out = stepper.forward(stepper.prepare(collate(rows, cfg.data.max_tokens)))
        if step == 0:
            _record_first_step(cfg.run.out, rank, rows, float(out["loss"].detach()), model)
        stepper.step(out["loss"])
        done = step + 1
        validate = done % cfg.run.val_every == 0 or done == cfg.optim.max_steps
        logged = validate or done % cfg.run.log_every == 0  # a validation loss is always logged
        checkpoint = done % cfg.run.checkpoint_every == 0 or done == cfg.optim.max_steps
        if not (logged or checkpoint):
            continue  # the metrics stay on the device: reading them is a host sync on a GPU
        last = _read_metrics(out)
        last.update(lr=stepper.lr(), step=done, elapsed_s=time.perf_counter() - started)
        if validate:
            last["val_loss"] = _validate(stepper, val, cfg)
        if logged:
            log.write(last)
        if checkpoint:
            log.flush()
            if rank == 0:
                files.sync(RUN_METRICS, "tensorboard")  # before the checkpoint: never behind it
            _checkpoint(stepper, done, last, cfg.run.out, distributed)
    log.close()
    stepper.export(files.local / RUN_EXPORT, cfg.model, rank, _token_settings(cfg.data.tokens) if rank == 0 else None)
    if rank == 0:
        files.sync(RUN_METRICS, "tensorboard", RUN_EXPORT)
    files.close()


def to_device(batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The batch on `device`, its floating-point tensors in `dtype`. To a GPU through pinned memory without waiting:
    a copy from pageable memory synchronizes the stream, so the host could not queue the next step's work while the
    device still runs this one."""
    pinned = torch.device(device).type == "cuda"
    return {k: (v.pin_memory() if pinned else v).to(device, dtype=dtype if v.is_floating_point() else None,
                                                     non_blocking=pinned)
            for k, v in batch.items()}


def _read_metrics(out: dict[str, torch.Tensor]) -> dict[str, float]:
    """The step's METRICS in `out` as numbers, in one host read."""
    names = [name for name in METRICS if name in out]
    return dict(zip(names, torch.stack([out[name].detach().float() for name in names]).tolist()))


def _validate(stepper: PlainStepper, val: pa.Table | None, cfg: PretrainConfig) -> float:
    """Mean loss over the first val_batches validation batches (fixed masks: seed 0), or nan."""
    if val is None or val.num_rows == 0:
        return float("nan")
    stepper.model.eval()
    generator = torch.Generator(device=stepper.device).manual_seed(0)
    size = max(1, cfg.data.batch_size)
    losses = []
    with torch.no_grad():
        for start in range(0, min(val.num_rows, size * cfg.run.val_batches), size):
            batch = stepper.prepare(collate(val.slice(start, size), cfg.data.max_tokens))
            losses.append(float(stepper.forward(batch, generator=generator)["loss"]))
    return float(np.mean(losses))


def _record_worker(out: str, rank: int, start_step: int, distributed: bool) -> None:
    """workers/rank-R.json: the node, host and process of this rank and the step it started from
    (rewritten by each restart), to find a rank's logs, or a process to kill in fault-tolerance tests."""
    node_id = ""
    if distributed:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
    record = {"rank": rank, "pid": os.getpid(), "node_id": node_id, "host": socket.gethostname(),
              "start_step": start_step}
    storage.write_text(storage.join(out, RUN_WORKERS, f"rank-{rank}.json"), json.dumps(record))


def _record_first_step(out: str, rank: int, rows: pa.Table, loss: float, model: torch.nn.Module) -> None:
    """workers/first-step-rank-R.json: the windows (key, start) of this rank's first batch in order, its loss, and the
    parameter elements this rank holds against the model's (ZeRO-3 keeps a partition per rank): what a test needs to
    recompute the step with the plain model and to see that the ZeRO stage took effect."""
    held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters())
    full = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    record = {"rank": rank, "loss": loss, "windows": list(zip(rows.column("key").to_pylist(),
                                                              rows.column("start").to_pylist())),
              "params_held": int(held), "params_full": int(full)}
    storage.write_text(storage.join(out, RUN_WORKERS, f"first-step-rank-{rank}.json"), json.dumps(record))


def _fail_once(out: str) -> None:
    marker = storage.join(out, ".fault_injected")
    if not storage.exists(marker):
        storage.write_text(marker, "")
        raise RuntimeError("injected fault (run.fail_at_step) to test recovery")


def _checkpoint(stepper: PlainStepper, step: int, metrics: dict[str, float], out: str, distributed: bool) -> None:
    if not distributed:  # write beside, then swap in: a crash never leaves a half checkpoint
        final, staging, old = (Path(out) / name for name in (LOCAL_CHECKPOINT, ".checkpoint_new", ".checkpoint_old"))
        for leftover in (staging, old):
            shutil.rmtree(leftover, ignore_errors=True)
        staging.mkdir(parents=True)
        stepper.save(str(staging), step)
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
        return
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        stepper.save(folder, step)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _resume(stepper: PlainStepper) -> int:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        return stepper.load(folder)


def _resume_local(stepper: PlainStepper, cfg: PretrainConfig) -> int:
    folder = Path(cfg.run.out) / LOCAL_CHECKPOINT
    return stepper.load(str(folder)) if (folder / "state.pt").exists() else 0


class MetricsLog:
    """metrics.csv and TensorBoard events, written by rank 0 only."""

    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        out.mkdir(parents=True, exist_ok=True)
        self.csv_path = out / RUN_METRICS
        self.tensorboard = SummaryWriter(str(out / "tensorboard"))

    def write(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        new = not self.csv_path.exists()
        # a run resumed by a newer version appends with the columns its file already has
        fields_ = ["step", "elapsed_s", *METRICS, "val_loss"] if new else \
            self.csv_path.read_text().split("\n", 1)[0].strip().split(",")
        with self.csv_path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields_, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in fields_})
        for name, value in row.items():
            if name != "step" and math.isfinite(value):  # no validation set: val_loss is nan
                self.tensorboard.add_scalar(name, value, int(row["step"]))

    def flush(self) -> None:
        if self.enabled:
            self.tensorboard.flush()

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()


# ---------------------------------------------------------------- the driver

@dataclass
class PretrainResult:
    out: Path | str  # a local folder, or the URI given as run.out
    steps: int
    final: dict[str, float]
    checkpoint: str  # Ray Train's latest checkpoint folder, or the local one
    export: Path | str


def pretrain(cfg: PretrainConfig, callbacks: Sequence[Any] = ()) -> PretrainResult:
    """Run pretraining as configured; returns where everything was written. `callbacks` are Ray Train
    run callbacks (`ray.train.UserCallback`, e.g. Tune's report callback when a sweep trial drives the run)."""
    # workers do not share the driver's working directory: hand them absolute paths (or URIs)
    cfg.run.out, cfg.data.tokens = storage.absolute(cfg.run.out), storage.absolute(cfg.data.tokens)
    cfg.data.extra_tokens = [storage.absolute(folder) for folder in cfg.data.extra_tokens]
    cfg.run.init_from = storage.absolute(cfg.run.init_from) if cfg.run.init_from else ""
    if storage.is_uri(cfg.run.out) and not cfg.dist.ray:
        raise ConfigError(f"run.out={cfg.run.out}: --no-ray keeps its checkpoints on a local disk; give a local "
                          "run.out or run on Ray")
    # every input and the run folder are checked before anything is written or any worker starts
    check_token_features(cfg)
    split = recording_split(cfg.data)
    if cfg.run.init_from:
        check_inference(cfg.run.init_from, fits=cfg.model)
    require_output(cfg.run.out, "run.out")
    check_resumable_run(cfg)
    with claim(cfg.run.out, "run.out"):
        files = storage.StagedFolder(cfg.run.out)
        save_config(cfg, files.local / RUN_CONFIG)
        files.sync(RUN_CONFIG)
        if not cfg.dist.ray:
            train_loop({"config": asdict(cfg)})
            checkpoint = str(files.local / LOCAL_CHECKPOINT)
        else:
            checkpoint = _fit_on_ray(cfg, split, callbacks)
        files.fetch(RUN_METRICS)  # written by rank 0, wherever it ran
        metrics = files.local / RUN_METRICS
        if not metrics.exists():
            raise RuntimeError(f"pretraining finished without writing {storage.join(cfg.run.out, RUN_METRICS)}; "
                               "see the Ray logs above")
        plot_metrics(metrics, files.local)
        files.sync("loss.png", "codebook.png")
        final = last_metrics(files.local)
        files.close()
    out = files.path
    return PretrainResult(out=out, steps=int(final.get("step", 0)), final=final, checkpoint=checkpoint,
                          export=storage.join(out, RUN_EXPORT) if files.remote else files.local / RUN_EXPORT)


def check_resumable_run(cfg: PretrainConfig) -> None:
    """A run folder with a config.yaml is continued: only RESUMABLE_KEYS may differ from it (ConfigError naming the
    first differences otherwise, with nothing written)."""
    saved = storage.join(cfg.run.out, RUN_CONFIG)
    if not storage.exists(saved):
        return
    try:
        before = dotted(asdict(load_config(PretrainConfig, [saved])))
    except ConfigError as err:
        raise ConfigError(f"run.out={cfg.run.out} holds a config.yaml that is not a run's ({err}); choose a new "
                          "run.out") from None
    now = dotted(asdict(cfg))
    differs = [f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
               if k not in (*RESUMABLE_KEYS, "run.out") and before.get(k) != now.get(k)]  # a moved run is the same
    if differs:
        raise ConfigError(f"run.out={cfg.run.out} holds a run with other settings ({'; '.join(differs[:3])}"
                          f"{' ...' if len(differs) > 3 else ''}); continue it with its settings (only "
                          f"{', '.join(RESUMABLE_KEYS)} may change) or choose a new run.out")


def _fit_on_ray(cfg: PretrainConfig, split: ShardSplit, callbacks: Sequence[Any] = ()) -> str:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train import DataConfig as RayDataConfig
    from ray.train.torch import TorchTrainer

    from aemg_dist.parallel import ensure_ray

    ensure_ray(cfg.dist.address or None)
    storage.require_shared(cfg.run.out, "run.out")  # every rank writes checkpoints there
    if cfg.run.init_from:
        storage.require_shared(cfg.run.init_from, "run.init_from")
    # the cluster's GPUs, not this driver's: on a cluster the driver runs on a CPU head node
    use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_gpu else "cpu")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": asdict(cfg)},
        scaling_config=ScalingConfig(num_workers=cfg.dist.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.dist.cpus_per_worker}),
        # same name + path = resume from its checkpoints; a URI path is written through pyarrow by Ray itself
        run_config=RayRunConfig(name=RAY_RUN, storage_path=cfg.run.out,
                                failure_config=FailureConfig(max_failures=cfg.dist.max_failures),
                                checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=list(callbacks),
                                worker_runtime_env={"env_vars": {"DS_ACCELERATOR": os.environ["DS_ACCELERATOR"]}}),
        datasets=reader_datasets(split, cfg.run.seed, input_readers(len(split.files), cfg.dist.num_workers),
                                 cfg.optim.max_steps * cfg.data.batch_size),
        # each rank reads its reader's dataset whole, at most read_ahead_mb ahead of its training
        dataset_config=RayDataConfig(datasets_to_split=[], execution_options=ingest_options(cfg.data.read_ahead_mb)),
    )
    result = trainer.fit()
    return result.checkpoint.path if result.checkpoint else ""


def plot_metrics(csv_path: Path, out: Path) -> list[Path]:
    """loss.png (total, reconstruction, masked, validation) and codebook.png (usage, perplexity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not csv_path.exists():
        return []
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    step = np.array([float(r["step"]) for r in rows])

    def series(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r.get(name) not in ("", None) else np.nan for r in rows])

    written = []
    for filename, names, title in (("loss.png", ("loss", "recon_loss", "mtm_loss", "val_loss"), "pretraining losses"),
                                   ("codebook.png", ("codebook_usage", "perplexity"), "codebook")):
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
        for ax, name in zip(axes[0], names):
            values = series(name)
            ax.plot(step[~np.isnan(values)], values[~np.isnan(values)], marker="." if name == "val_loss" else None)
            ax.set_title(name)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out / filename, dpi=110)
        plt.close(fig)
        written.append(out / filename)
    return written
