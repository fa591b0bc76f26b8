"""Streaming pretraining input: the split from the manifest, file-by-file batches (one epoch serves every
training row once), resume by skipping, and the Ray Data dataset of the distributed path."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from aemg_dist.artifacts import TokenizeConfig, read_token_table
from aemg_dist.data import tokenize_corpus
from aemg_dist.shards import rank_files, read_rows, split_recordings, stream_batches, validation_rows
from aemg_dist.train import DataConfig, input_readers, reader_dataset_name, reader_datasets, split_tables

EXCLUDED = ["synth_myo/s01"]


@pytest.fixture(scope="module")
def tokens(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "tokens"
    # short read tasks: several part files, so ranks and epochs have files to divide and order
    tokenize_corpus(tiny_corpus, out, TokenizeConfig(task_s=20.0), workers=1, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def extra_tokens(extra_corpus, tmp_path_factory):
    """Another corpus's tokens, tokenized with the same settings."""
    out = tmp_path_factory.mktemp("extra") / "tokens"
    tokenize_corpus(extra_corpus, out, TokenizeConfig(task_s=20.0), workers=1, progress=False)
    return str(out)


def _rows(tables) -> list[tuple[str, int]]:
    table = pa.concat_tables(list(tables))
    return list(zip(table.column("key").to_pylist(), table.column("start").to_pylist()))


def _split(tokens):
    return split_recordings(tokens, exclude_subjects=EXCLUDED, val_fraction=0.25)


def test_the_split_comes_from_the_manifest_and_matches_the_rows(tokens):
    split = _split(tokens)
    every = read_token_table(tokens)
    keys = set(every.column("key").to_pylist())
    assert split.train_keys | split.val_keys == {k for k in keys if not k.startswith("synth_myo/s01/")}
    assert not split.train_keys & split.val_keys and split.val_keys
    train, val = split_tables(DataConfig(tokens=tokens, exclude_subjects=EXCLUDED, val_fraction=0.25))
    assert set(train.column("key").to_pylist()) == split.train_keys
    assert set(val.column("key").to_pylist()) == split.val_keys
    with pytest.raises(ValueError, match="no training windows left"):
        split_recordings(tokens, exclude_datasets=sorted({k.split("/")[0] for k in keys}))
    # without validation recordings the validation table is empty, not an error
    train, val = split_tables(DataConfig(tokens=tokens, val_fraction=0.0))
    assert val.num_rows == 0 and train.num_rows == every.num_rows


def test_several_token_folders_are_read_as_one_with_the_exclusions_applied_to_each(tokens, extra_tokens):
    exclude = [*EXCLUDED, "synth_extra/s02"]
    split = split_recordings([tokens, extra_tokens], exclude_subjects=exclude, val_fraction=0.25)
    alone = [split_recordings(folder, exclude_subjects=exclude, val_fraction=0.25) for folder in (tokens, extra_tokens)]
    assert split.files == alone[0].files + alone[1].files
    assert split.train_keys == alone[0].train_keys | alone[1].train_keys
    assert split.val_keys == alone[0].val_keys | alone[1].val_keys  # the hash split does not depend on the company
    assert any(k.startswith("synth_extra/s01/") for k in split.train_keys | split.val_keys)
    assert not any(k.startswith("synth_extra/s02/") for k in split.train_keys | split.val_keys)
    train, _ = split_tables(DataConfig(tokens=tokens, extra_tokens=[extra_tokens], exclude_subjects=exclude,
                                       val_fraction=0.25))
    assert set(train.column("key").to_pylist()) == split.train_keys
    # one epoch streams every training row of both folders once
    stream = stream_batches(split, batch_size=1, seed=0, buffer_batches=64)
    served = _rows(next(stream) for _ in range(train.num_rows))
    assert sorted(served) == sorted(_rows([train]))
    with pytest.raises(ValueError, match="is in both"):  # the same recordings twice would be read twice
        split_recordings([tokens, tokens])


@pytest.mark.parametrize("world", [1, 2])
def test_one_epoch_serves_every_training_row_once(tokens, world):
    split = _split(tokens)
    train, _ = split_tables(DataConfig(tokens=tokens, exclude_subjects=EXCLUDED, val_fraction=0.25))
    expected = sorted(_rows([train]))
    order = np.random.default_rng([0, 0]).permutation(len(split.files))
    served = []
    for rank in range(world):  # with batches of one row, an epoch is exactly the rows of the rank's files
        n_rank = sum(read_rows(split.files[i], split.train_keys).num_rows for i in order[rank::world])
        stream = stream_batches(split, batch_size=1, seed=0, rank=rank, world=world, buffer_batches=64)
        served += _rows(next(stream) for _ in range(n_rank))
    assert sorted(served) == expected  # the same multiset as the whole training table: each row once
    batches = stream_batches(split, batch_size=16, seed=0, buffer_batches=4)
    first = _rows(next(batches) for _ in range(len(expected) // 16))
    assert len(set(first)) == len(first)  # within an epoch no row comes twice
    assert set(first) <= set(expected)


def test_skip_continues_the_same_sequence_and_seeds_differ(tokens):
    split = _split(tokens)
    whole = stream_batches(split, batch_size=8, seed=3, buffer_batches=4)
    sequence = [_rows([next(whole)]) for _ in range(40)]  # past the first epoch
    resumed = stream_batches(split, batch_size=8, seed=3, buffer_batches=4, skip=30)
    assert [_rows([next(resumed)]) for _ in range(10)] == sequence[30:]
    other = stream_batches(split, batch_size=8, seed=4, buffer_batches=4)
    assert _rows([next(other)]) != sequence[0]


def test_validation_rows_are_the_first_rows_of_the_validation_recordings(tokens):
    split = _split(tokens)
    _, every = split_tables(DataConfig(tokens=tokens, exclude_subjects=EXCLUDED, val_fraction=0.25))
    val = validation_rows(split, 4)
    assert val.num_rows == 4 < every.num_rows and set(val.column("key").to_pylist()) <= split.val_keys
    assert _rows([val]) == _rows([validation_rows(split, 4)])  # the same rows every time
    assert validation_rows(split, 10 * every.num_rows).num_rows == every.num_rows
    assert validation_rows(split_recordings(tokens, val_fraction=0.0), 10) is None


def _consumed(dataset, columns=("key", "start")) -> list[tuple[str, int]]:
    """Every row the dataset yields, consumed (count() can answer from the file metadata), in order."""
    return _rows(b.select(list(columns)) for b in dataset.iter_batches(batch_format="pyarrow", batch_size=None))


def test_each_reader_s_ray_data_dataset_reads_its_files_epoch_after_epoch(tokens, ray_local):
    """The distributed path reads exactly the rows `--no-ray` reads: reader r's files of each epoch, in that order,
    the training recordings only, for the epochs the run needs."""
    split = _split(tokens)
    world, epochs = 2, 3
    datasets = reader_datasets(split, seed=5, readers=world, rows_needed=epochs * split.train_rows)
    assert sorted(datasets) == [reader_dataset_name(r) for r in range(world)]
    for rank in range(world):
        dataset = datasets[reader_dataset_name(rank)]
        dataset.context.execution_options.preserve_order = True  # the order of the files as listed, not as read
        expected = _rows(read_rows(path, split.train_keys) for epoch in range(epochs)
                         for path in rank_files(split, 5, epoch, rank, world))
        assert _consumed(dataset) == expected
    # one epoch of both ranks is every training row once
    train, _ = split_tables(DataConfig(tokens=tokens, exclude_subjects=EXCLUDED, val_fraction=0.25))
    one_epoch = reader_datasets(split, seed=5, readers=world, rows_needed=1)
    assert sorted(r for d in one_epoch.values() for r in _consumed(d)) == sorted(_rows([train]))
    # one reader per rank while every rank has whole files to read, else one reader that the ranks share
    assert [input_readers(n, 2) for n in (1, 2, 5)] == [1, 2, 2] and input_readers(1, 1) == 1


def test_the_ray_data_dataset_reads_while_the_training_workers_hold_every_cpu(tokens, ray_local):
    """Ray Train leaves Ray Data none of the CPUs its workers hold; with 2 workers on 2 CPUs a read that needs a
    CPU would wait forever (the V2 Parquet read's file listing does)."""
    import ray

    split = _split(tokens)
    train, _ = split_tables(DataConfig(tokens=tokens, exclude_subjects=EXCLUDED, val_fraction=0.25))
    dataset = reader_datasets(split, seed=0, readers=1, rows_needed=1)[reader_dataset_name(0)]  # before the workers start

    @ray.remote(num_cpus=1)
    class Holder:
        def ready(self) -> bool:
            return True

    @ray.remote(num_cpus=0)
    def rows(dataset) -> int:  # consumed, not counted: count() can answer from the file metadata
        return len(_consumed(dataset))

    holders = [Holder.remote() for _ in range(int(ray.cluster_resources()["CPU"]))]
    ray.get([h.ready.remote() for h in holders])
    done = rows.remote(dataset)
    try:
        assert ray.get(done, timeout=180) == train.num_rows
    finally:
        ray.cancel(done, force=True)
        for h in holders:
            ray.kill(h)
