"""Token shards as pretraining streams them: which recordings train and which validate, read file by file.

No process holds the token table. The split is decided from the token folders' manifests
(`tokens.json` lists every recording and every part file; pretraining may read several folders, e.g. a
synthetic corpus's tokens beside the real ones), per recording:

- a recording whose (dataset, subject) or dataset is excluded is never read;
- of the others, a stable hash of the key puts `val_fraction` of them in validation (whole recordings,
  so no validation window shares a recording with a training window).

`stream_batches` then reads the part files in an order drawn per epoch from (seed, epoch), this
rank's share of them (every `world`-th file, `rank_files`), keeps the rows of training recordings and
draws batches from a shuffle buffer of `buffer_batches` batches; every training row is served exactly
once per epoch (a last partial batch waits for the next epoch's first rows). The Ray path reads each
rank's same files with Ray Data (train.py); `validation_rows` reads the first rows of the validation
recordings, the same on every rank and every run. Plain pyarrow and numpy: no Ray here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aemg_dist import storage
from aemg_dist.artifacts import read_tokens_manifest
from aemg_dist.errors import ConfigError


@dataclass(frozen=True)
class ShardSplit:
    """The part files of the token folders and the recordings pretraining trains and validates on."""

    folder: str  # the folders, comma-separated (for messages)
    files: tuple[str, ...]  # every part file (paths or URIs), in the manifests' order, folder after folder
    train_keys: frozenset[str]
    val_keys: frozenset[str]
    train_rows: int  # estimated from the manifest: the part files' rows times the training recordings' share


def split_recordings(folders: str | Sequence[str], exclude_subjects: Sequence[str] = (),
                     exclude_datasets: Sequence[str] = (), val_fraction: float = 0.1) -> ShardSplit:
    """The split of one or more finished `aemg tokenize` folders (see read_tokens_manifest for a folder that is not
    one; ConfigError when a recording is in two folders, or the exclusions leave no training recording)."""
    folders = [folders] if isinstance(folders, str) else list(folders)
    files: list[str] = []
    recordings: dict[str, str] = {}  # key -> the folder that holds it
    rows = 0
    for folder in folders:
        manifest = read_tokens_manifest(folder, "data.tokens")
        files += [storage.join(folder, f["path"]) for f in manifest["files"] if f["rows"]]
        rows += sum(f["rows"] for f in manifest["files"])
        for key in manifest["recordings"]:
            if key in recordings:  # its rows would be read twice, and the key filter cannot tell them apart
                raise ConfigError(f"recording {key} is in both {recordings[key]} and {folder}; give each "
                                  "recording's tokens once (data.tokens, data.extra_tokens)")
            recordings[key] = folder
    kept = [k for k in recordings if k.split("/")[0] not in set(exclude_datasets)
            and "/".join(k.split("/")[:2]) not in set(exclude_subjects)]
    # a stable hash of the key: the split never depends on file order or the machine
    val = {k for k in kept if zlib.crc32(k.encode()) / 2**32 < val_fraction}
    train = frozenset(kept) - val
    named = ", ".join(folders)
    if not train:
        raise ConfigError(f"no training windows left in {named} after the exclusions (data.exclude_subjects, "
                          "data.exclude_datasets, data.val_fraction)")
    return ShardSplit(named, tuple(files), train, frozenset(val), rows * len(train) // max(1, len(recordings)))


def rank_files(split: ShardSplit, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[str]:
    """The part files `rank` of `world` reads in `epoch`, in its reading order: every `world`-th file of an order
    drawn from (seed, epoch), the same on every rank, so the ranks share each epoch's files without overlap."""
    order = np.random.default_rng([seed, epoch]).permutation(len(split.files))
    return [split.files[i] for i in order[rank::world]]


def count_rows(split: ShardSplit, keys: frozenset[str], at_most: int | None = None) -> int:
    """Rows of these recordings in the split's part files (only the key column is read), counting stops once
    at_most are found."""
    found = 0
    for path in split.files:
        found += read_rows(path, keys, ["key"]).num_rows
        if at_most is not None and found >= at_most:
            break
    return found


def read_rows(path: str, keys: frozenset[str], columns: Sequence[str] | None = None) -> pa.Table:
    """The rows of one part file whose recording key is in `keys` (the filter runs in the Parquet scan)."""
    fs, inner = storage.filesystem(path)
    if columns is not None and "key" not in columns:
        columns = [*columns, "key"]
    return pq.read_table(inner, filesystem=fs, columns=columns, filters=pc.field("key").isin(pa.array(sorted(keys), type=pa.string())))  # typed: no keys is a valid filter


def stream_batches(split: ShardSplit, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                   buffer_batches: int = 8, skip: int = 0) -> Iterator[pa.Table]:
    """Batches of training rows forever, epoch after epoch (see the module docstring); the first `skip`
    batches are drawn and dropped, so a resumed run continues the uninterrupted sequence."""
    if batch_size < 1 or buffer_batches < 1:
        raise ValueError("batch_size and buffer_batches must be >= 1")
    served, epoch, buffer = 0, 0, []
    while True:
        rng = np.random.default_rng([seed, epoch, rank])
        files = rank_files(split, seed, epoch, rank, world)
        mine = (read_rows(path, split.train_keys) for path in files)  # one file at a time
        read = 0
        for rows in _then_none(mine):  # None: the epoch's end, where the buffer is served down to a partial batch
            if rows is not None:
                read += rows.num_rows
                buffer.append(rows)
                if sum(t.num_rows for t in buffer) < buffer_batches * batch_size:
                    continue
            elif read == 0 and world > 1:
                raise ValueError(f"rank {rank} of {world} has no training rows in {split.folder}: fewer part files "
                                 "than workers; tokenize with a smaller task_s or use fewer workers")
            batches, buffer = _shuffled_batches(buffer, batch_size, rng)
            for batch in batches:
                if served >= skip:
                    yield batch
                served += 1
        epoch += 1


def _then_none(items: Iterator[pa.Table]) -> Iterator[pa.Table | None]:
    yield from items
    yield None


def _shuffled_batches(buffer: list[pa.Table], batch_size: int,
                      rng: np.random.Generator) -> tuple[list[pa.Table], list[pa.Table]]:
    """The buffer's rows in a random order as full batches, and the rows left over (fewer than a batch)."""
    pool = pa.concat_tables(buffer)
    pool = pool.take(rng.permutation(pool.num_rows))
    full = pool.num_rows // batch_size * batch_size
    return [pool.slice(start, batch_size) for start in range(0, full, batch_size)], [pool.slice(full)]


def validation_rows(split: ShardSplit, n_rows: int) -> pa.Table | None:
    """The first n_rows rows of the validation recordings, files in manifest order (None without any)."""
    if not split.val_keys or n_rows < 1:
        return None
    tables, held = [], 0
    for path in split.files:
        rows = read_rows(path, split.val_keys)
        tables.append(rows.slice(0, n_rows - held))
        held += tables[-1].num_rows
        if held >= n_rows:
            break
    table = pa.concat_tables(tables) if tables else None
    return table if table is not None and table.num_rows else None
