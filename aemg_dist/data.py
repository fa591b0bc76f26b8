"""`aemg tokenize`: harmonized corpus -> token shards (Parquet), streamed through Ray Data.

Three steps, which overlap on Ray:

1. **Plan** (Ray tasks of several recordings each, `parallel.submit_each`): the recording-level noise
   floor of every channel (from its envelope, read in bounded pieces) and the recording's windows
   (`windows.py`). The floor is a property of the recording, so a window is tokenized the same way
   whichever shard, worker or run it lands in.
2. **Read and tokenize** (`CorpusTokensDatasource`, a Ray Data datasource driven by the corpus manifest):
   the recordings are cut into groups of about `task_s` seconds (`group_recordings`, from the manifest
   alone, so the pipeline starts while planning runs); a group's read task waits for its recordings'
   plans, then reads shards (consecutive windows spanning at most `shard_s` seconds, one time range
   each) and tokenizes them. Ray Data's `read_zarr` refuses zarr-python 3 and cannot ship array
   attributes, hence this small datasource.
3. **Write** Parquet, one row per window (schema in `artifacts.py`): one file per read task, written
   whole (never half visible) and named after its first window; then `tokens.json` (files, counts,
   feature names, config), which marks the output complete.

Resuming: `tokenize.yaml` (the resolved config) is written first. A run that was killed is finished
by running it again with the same config: the windows already in a part file are skipped and only
the missing ones are tokenized. The output folder may be a URI (`s3://...`, see `storage.py`).

Windows are tokenized independently (an event that crosses a window border is cut there),
so the Ray Data output equals the in-process output row for row, and memory stays bounded
by the number of shards in flight whatever the corpus size.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from functools import cache, partial
from typing import Any, Callable, Collection, Iterable, Iterator

import numpy as np
import pyarrow as pa
from omegaconf import OmegaConf
from ray.data.block import Block, BlockAccessor, BlockMetadata
from ray.data.datasource import Datasink, Datasource, ReadTask
from tqdm import tqdm

from aemg_dist import storage
from aemg_dist.artifacts import (TOKENIZE_CONFIG, TOKENS_MANIFEST, TokenizeConfig, read_part, write_part,
                                 windows_to_table, write_tokens_manifest)
from aemg_dist.events import recording_floor
from aemg_dist.parallel import ensure_shared, submit_each
from aemg_dist.tokens import feature_names, tokenize_windows
from aemg_dist.validate import claim, require_output
from aemg_dist.windows import Windows, cut_windows, recording_spans
from preprocessing.corpus import Corpus, CorpusError
from preprocessing.recording import Segment


@dataclass(frozen=True)
class RecordingPlan:
    """What a worker needs to tokenize any window of one recording."""

    key: str
    dataset: str
    subject: str
    session: str
    fs: float
    source_fs: float
    coords: np.ndarray  # (C, 3) canonical electrode coordinates
    channel_ok: np.ndarray  # (C,) bool
    floor: np.ndarray  # (C,) recording-level noise floor of the envelope
    windows: Windows
    label_names: dict[int, str]


@dataclass(frozen=True)
class Shard:
    """Windows [first, last) of one recording, read as one time range."""

    key: str
    first: int
    last: int
    start: int  # first sample read
    stop: int  # one past the last sample read


def plan_recording(key: str, corpus_path: str, cfg: TokenizeConfig) -> RecordingPlan:
    """Noise floor and windows of one recording (runs as a Ray task)."""
    corpus = Corpus(corpus_path)
    attrs = corpus.attrs(key)
    entry = corpus.entry(key)
    fs = entry.fs
    floor = recording_floor(partial(corpus.read, key), entry.n_samples, fs, cfg.events)
    segments = [Segment(**s) for s in attrs["segments"]]
    spans = recording_spans(entry.n_samples, segments, attrs["joins"], cfg.windows, attrs["rest_label"])
    return RecordingPlan(
        key=key, dataset=entry.dataset, subject=entry.subject, session=entry.session, fs=fs,
        source_fs=entry.source_fs, coords=np.asarray(attrs["canonical_coordinates"], dtype=np.float32),
        channel_ok=np.asarray(attrs["channel_ok"], dtype=bool), floor=floor,
        windows=cut_windows(spans, fs, cfg.windows), label_names={int(k): v for k, v in attrs["label_names"].items()},
    )


def make_shards(plan: RecordingPlan, shard_s: float, done: Collection[int] = ()) -> list[Shard]:
    """Group consecutive windows so one shard reads at most ~shard_s seconds; windows whose start is
    in `done` (already written by an earlier run) are left out and split the runs around them."""
    w = plan.windows
    limit = max(1, int(shard_s * plan.fs))
    todo = ~np.isin(w.start, np.fromiter(done, dtype=np.int64, count=len(done)))
    shards, first = [], 0
    while first < len(w):
        if not todo[first]:
            first += 1
            continue
        # windows are sorted by start; take those starting within `limit` of the first one
        last = int(np.searchsorted(w.start, w.start[first] + limit, side="left"))
        last = max(last, first + 1)
        written = np.flatnonzero(~todo[first:last])
        last = first + int(written[0]) if written.size else last
        shards.append(Shard(plan.key, first, last, int(w.start[first]), int(w.stop[first:last].max())))
        first = last
    return shards


@dataclass(frozen=True)
class Stretch:
    """Samples [start, stop) of one recording: the windows that start there are tokenized by one read task."""

    key: str
    start: int
    stop: int


def group_recordings(corpus: Corpus, keys: list[str], task_s: float) -> list[list[Stretch]]:
    """Runs of consecutive recordings covering about `task_s` seconds of EMG, a recording cut where a run is full:
    one read task, one part file. Made from the corpus manifest alone, so tokenizing starts before every
    recording is planned."""
    groups, run, left = [], [], task_s
    for key in keys:
        entry = corpus.entry(key)
        start = 0
        while start < entry.n_samples:
            stop = min(entry.n_samples, start + max(1, round(left * entry.fs)))
            run.append(Stretch(key, start, stop))
            left -= (stop - start) / entry.fs
            start = stop
            if left * entry.fs < 1:
                groups.append(run)
                run, left = [], task_s
    return groups + ([run] if run else [])


def stretch_shards(plan: RecordingPlan, stretch: Stretch, shard_s: float, done: Collection[int] = ()) -> list[Shard]:
    """The shards of the windows that start in the stretch and are not `done`."""
    starts = plan.windows.start
    outside = starts[(starts < stretch.start) | (starts >= stretch.stop)]
    return make_shards(plan, shard_s, {*done, *outside.tolist()})


def read_shard(corpus: Corpus, plan: RecordingPlan, shard: Shard) -> dict[str, np.ndarray]:
    """One row per window of the shard: identifiers, label and the window's samples."""
    samples = corpus.read(shard.key, shard.start, shard.stop)
    w = plan.windows
    idx = np.arange(shard.first, shard.last)
    emg = np.empty(len(idx), dtype=object)
    for row, i in enumerate(idx):
        emg[row] = samples[w.start[i] - shard.start:w.stop[i] - shard.start]
    return {"key": np.full(len(idx), shard.key, dtype=object), "start": w.start[idx], "stop": w.stop[idx],
            "label": w.label[idx], "rep": w.rep[idx], "emg": emg}


def tokenize_rows(batch: dict[str, np.ndarray], plans: dict[str, RecordingPlan], cfg: TokenizeConfig) -> pa.Table:
    """Tokenize every window row of a batch; returns Parquet-ready rows (`artifacts.windows_to_table`)."""
    keys = [str(k) for k in batch["key"]]
    # One vectorized call per recording (same channels, floor and rates): the per-window call overhead dominated
    # 2 s windows (benchmarks/RESULTS.md, contraction-event detection).
    rows_of: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        rows_of.setdefault(key, []).append(i)
    tokens: list = [None] * len(keys)
    for key, rows in rows_of.items():
        plan, windows = plans[key], [np.asarray(batch["emg"][i]) for i in rows]
        for i, window_tokens in zip(rows, tokenize_windows(windows, plan.fs, plan.coords, plan.source_fs,
                                                           plan.channel_ok, cfg.events, cfg.tokens, floor=plan.floor)):
            tokens[i] = window_tokens
    labels = np.asarray(batch["label"], dtype=np.int64)
    return windows_to_table({
        "key": keys,
        "dataset": [plans[k].dataset for k in keys],
        "subject": [plans[k].subject for k in keys],
        "session": [plans[k].session for k in keys],
        "start": np.asarray(batch["start"], dtype=np.int64),
        "stop": np.asarray(batch["stop"], dtype=np.int64),
        "fs": np.array([plans[k].fs for k in keys]),
        "label": labels,
        "label_name": [plans[k].label_names.get(int(lab), "") for k, lab in zip(keys, labels)],
        "rep": np.asarray(batch["rep"], dtype=np.int64),
    }, tokens)


def written_windows(out: str) -> dict[str, set[int]]:
    """Window starts per recording key found in the part files of `out` (what a re-run skips)."""
    done: dict[str, set[int]] = {}
    for path in storage.listdir(out, ".parquet"):
        table = read_part(path, ["key", "start"])
        for key, start in zip(table.column("key").to_pylist(), table.column("start").to_pylist()):
            done.setdefault(key, set()).add(start)
    return done


class TokenPartSink(Datasink):
    """Ray Data sink: each write task's token rows become one part file (`write_part`)."""

    def __init__(self, out: str):
        self.out = out

    def write(self, blocks: Iterable[Block], ctx: Any) -> None:
        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        if tables:
            write_part(self.out, pa.concat_tables(tables))


class CorpusTokensDatasource(Datasource):
    """Ray Data datasource: one read task per group of stretches (`group_recordings`), which tokenizes the windows
    that start in them and yields one block of token rows per shard. A recording's plan comes as an object ref of
    the Ray task planning it: a read task waits for the plans of its own recordings only."""

    def __init__(self, corpus_path: str, groups: list[list[Stretch]], plans: dict[str, Any],
                 done: dict[str, set[int]], cfg: TokenizeConfig):
        super().__init__()
        self.corpus_path, self.groups, self.plans, self.done, self.cfg = corpus_path, groups, plans, done, cfg

    def estimate_inmemory_data_size(self) -> None:
        return None  # token rows: not known before tokenizing

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        tasks = []
        for group in self.groups:
            keys = {s.key for s in group}  # a task carries only its own recordings' plans and windows
            read = partial(_read_tokens, self.corpus_path, group, {k: self.plans[k] for k in keys},
                           {k: self.done[k] for k in keys if k in self.done}, self.cfg)
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
        return tasks


def _read_tokens(corpus_path: str, group: list[Stretch], plans: dict[str, Any], done: dict[str, set[int]],
                 cfg: TokenizeConfig) -> Iterator[pa.Table]:
    import ray

    # waits for the Ray task planning a recording (if it still runs) when the group reaches that recording
    yield from tokenize_group(Corpus(corpus_path), group, cache(lambda key: ray.get(plans[key])), done, cfg)


def tokenize_group(corpus: Corpus, group: list[Stretch], plan_of: Callable[[str], RecordingPlan],
                   done: dict[str, set[int]], cfg: TokenizeConfig) -> Iterator[pa.Table]:
    """Token rows of the windows that start in the group's stretches and are not `done`, one table per shard:
    memory is bounded by the shard, not the group. `plan_of(key)` gives a recording's plan."""
    for stretch in group:
        plan = plan_of(stretch.key)
        for shard in stretch_shards(plan, stretch, cfg.shard_s, done.get(stretch.key, ())):
            yield tokenize_rows(read_shard(corpus, plan, shard), {plan.key: plan}, cfg)


@dataclass
class TokenizeReport:
    out: str
    recordings: int = 0
    windows: int = 0
    tokens: int = 0
    empty_windows: int = 0
    skipped_spans: int = 0
    channel_samples: int = 0
    wall_seconds: float = 0.0
    resumed_windows: int = 0  # found already written in `out` and not tokenized again
    files: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.channel_samples / max(self.wall_seconds, 1e-9) / 1e6
        return (f"tokens: {self.out}  ({self.recordings} recordings, {self.windows} windows, {self.tokens} tokens, "
                f"{self.empty_windows} windows without activity, {self.skipped_spans} spans too short) "
                f"in {self.wall_seconds:.1f} s ({rate:.1f} M channel-samples/s)"
                + (f"; {self.resumed_windows} windows were already written by an earlier run" if self.resumed_windows else ""))


def tokenize_corpus(corpus_path: str | Path, out: str | Path, cfg: TokenizeConfig | None = None, *,
                    keys: list[str] | None = None, workers: int = 0, address: str | None = None,
                    progress: bool = True) -> TokenizeReport:
    """Tokenize a corpus (or the recordings `keys`) into Parquet token shards at `out`.

    workers == 1 runs everything in this process; otherwise planning runs as Ray tasks and
    tokenization as a Ray Data pipeline (local Ray, or the cluster at `address`) that starts at once, each read
    task waiting only for the plans of its own recordings. `corpus_path` and `out` may be URIs. A re-run on the
    `out` of a killed run (same config) does only what is missing. In this process a recording that cannot be
    read stops the run before anything is written; with Ray, part files of other recordings may already be
    written by then (complete, and kept for the re-run).
    """
    cfg = cfg or TokenizeConfig()
    start_time = time.perf_counter()
    corpus_path, out = storage.absolute(corpus_path), storage.absolute(out)
    corpus = Corpus(corpus_path)  # the corpus, the output and its earlier contents are checked before any write
    missing = sorted(set(keys or ()) - set(corpus.keys()))
    if missing or not len(corpus):
        raise CorpusError(f"{corpus_path} holds no recordings {missing[:3] if missing else ''}; nothing to tokenize")
    require_output(out, "--out")
    resolved = _check_output(out, cfg)
    with claim(out, "--out"):
        ensure_shared([("--corpus", corpus_path), ("--out", out)], workers, address)  # read and written by workers
        keys = corpus.keys() if keys is None else keys
        groups = group_recordings(corpus, keys, cfg.task_s)
        done = written_windows(out)
        if workers == 1:
            plans = _tokenize_local(corpus, keys, groups, done, cfg, out, resolved, progress)
        else:
            plans = _tokenize_ray_data(corpus_path, keys, groups, done, cfg, out, resolved, address)
        report = _write_manifest(out, plans, cfg)
    report.resumed_windows = sum(len(starts) for starts in done.values())
    report.wall_seconds = time.perf_counter() - start_time
    return report


def _check_output(out: str, cfg: TokenizeConfig) -> str:
    """Refuse a finished output or one made with another config (nothing is written); returns this run's
    resolved config, the text of OUT/tokenize.yaml."""
    if storage.exists(storage.join(out, TOKENS_MANIFEST)):
        raise FileExistsError(f"{out} already holds a complete tokenization ({TOKENS_MANIFEST}); "
                              "choose a new --out or delete it")
    config_path = storage.join(out, TOKENIZE_CONFIG)
    resolved = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    if storage.listdir(out, ".parquet"):
        previous = storage.read_text(config_path) if storage.exists(config_path) else None
        if previous != resolved:
            raise FileExistsError(f"{out} holds token shards of another tokenization (its tokenize.yaml differs or "
                                  "is missing); re-run with the same config to finish it, or choose a new --out")
    elif storage.listdir(out) and not storage.exists(config_path):
        raise FileExistsError(f"{out} holds other files and is not a token folder; choose a new --out")
    return resolved


def _tokenize_local(corpus: Corpus, keys: list[str], groups: list[list[Stretch]], done: dict[str, set[int]],
                    cfg: TokenizeConfig, out: str, resolved: str, progress: bool) -> dict[str, RecordingPlan]:
    """Plan every recording, then tokenize group after group into the part files the Ray Data path writes."""
    plans = {key: plan_recording(key, str(corpus.path), cfg)
             for key in tqdm(keys, desc="plan", unit="rec", disable=not progress)}
    storage.write_text(storage.join(out, TOKENIZE_CONFIG), resolved)  # before any part: a re-run finishes them
    for group in tqdm(groups, desc="tokenize", unit="part", disable=not progress):
        tables = list(tokenize_group(corpus, group, plans.__getitem__, done, cfg))
        if tables:
            write_part(out, pa.concat_tables(tables))
    return plans


def _tokenize_ray_data(corpus_path: str, keys: list[str], groups: list[list[Stretch]], done: dict[str, set[int]],
                       cfg: TokenizeConfig, out: str, resolved: str, address: str | None) -> dict[str, RecordingPlan]:
    """Planning tasks and the Ray Data pipeline at once: no barrier between them (on the real corpus planning is
    about a third of the work)."""
    import ray

    # On small clusters Ray Data's per-operator reservations serialize a read+map pipeline;
    # without them a 2-CPU machine runs it ~1.7x faster (STACK_NOTES.md).
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    # in the groups' order, a few milliseconds each: several recordings per task (submit_each)
    plans = dict(zip(keys, submit_each(plan_recording, keys, corpus_path, cfg, address=address)))
    storage.write_text(storage.join(out, TOKENIZE_CONFIG), resolved)  # before any part: a re-run finishes them
    if groups:  # none when every recording is empty
        # one block per read task keeps the read fused with the writer: one part file per task
        dataset = ray.data.read_datasource(CorpusTokensDatasource(corpus_path, groups, plans, done, cfg),
                                           override_num_blocks=len(groups))
        dataset.write_datasink(TokenPartSink(out))
    return dict(zip(keys, ray.get(list(plans.values()))))


def _write_manifest(out: str, plans: dict[str, RecordingPlan], cfg: TokenizeConfig) -> TokenizeReport:
    report = TokenizeReport(out=out, recordings=len(plans))
    for path in storage.listdir(out, ".parquet"):
        n_tokens = read_part(path, ["n_tokens"]).column("n_tokens").to_numpy()  # one row per window
        report.files.append({"path": path.rsplit("/", 1)[-1], "rows": len(n_tokens), "tokens": int(n_tokens.sum())})
        report.windows += len(n_tokens)
        report.tokens += int(n_tokens.sum())
        report.empty_windows += int((n_tokens == 0).sum())
    report.skipped_spans = sum(p.windows.skipped_spans for p in plans.values())
    report.channel_samples = sum(int((p.windows.stop - p.windows.start).sum()) * len(p.coords) for p in plans.values())
    write_tokens_manifest(out, feature_names(cfg.tokens), {"events": asdict(cfg.events), "tokens": asdict(cfg.tokens),
                                                          "windows": asdict(cfg.windows), "shard_s": cfg.shard_s},
                          list(plans), report.files)  # last: marks the output complete
    return report
