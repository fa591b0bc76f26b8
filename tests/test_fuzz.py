"""Property-based fuzzing of what reads user files: the source readers, manifests, config overrides, the corpus
manifest and the checkpoint loader. Random and mutated inputs may be accepted or refused, but a refusal is always
the project's own error (naming the file) and every call returns within a time bound."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from aemg_dist.config import ConfigError, load_config
from aemg_dist.model import AEMGModel, ModelConfig, export_inference, load_inference
from aemg_dist.model.export import CheckpointError
from aemg_dist.train import PretrainConfig
from preprocessing.corpus import Corpus, CorpusError
from preprocessing.errors import DataError, ManifestError
from preprocessing.manifest import DatasetManifest
from preprocessing.readers import BinaryReader, DelimitedReader, LabelColumnReader

FUZZ = settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
TEXT = st.text(alphabet="0123456789.,-+eE nainf\t\n\r x;", max_size=400)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True)
                    | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


def scratch(name: str, content: bytes) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    (folder / name).write_bytes(content)
    return folder / name


@FUZZ
@given(text=TEXT, channels=st.integers(1, 4), skip=st.integers(0, 2), delimiter=st.sampled_from([",", None, ";"]),
       labels=st.booleans())
def test_text_readers_accept_or_name_the_file(text, channels, skip, delimiter, labels):
    path = scratch("x.csv", text.encode())
    reader = (LabelColumnReader if labels else DelimitedReader)(delimiter=delimiter, skip_header=skip)
    try:
        data = reader.read(path, channels)
    except DataError as err:
        assert err.where == str(path)
        return
    assert data.emg.shape[1] == channels and np.isfinite(data.emg).any()


@FUZZ
@given(content=st.binary(max_size=300), channels=st.integers(1, 8),
       dtype=st.sampled_from(["int16", "uint8", "float32", "float64", "int32"]))
def test_the_binary_reader_accepts_or_names_the_file(content, channels, dtype):
    path = scratch("x.bin", content)
    try:
        data = BinaryReader(dtype=dtype).read(path, channels)
    except DataError as err:
        assert err.where == str(path)
        return
    assert data.emg.shape[1] == channels


MANIFEST = {"name": "toy", "folder": "toy", "pattern": "{subject}/{session}/g_{rep}_{label}.csv",
            "reader": {"kind": "delimited", "delimiter": ","}, "fs": 1000, "units": "uV",
            "electrodes": {"layout": "ring", "n_channels": 4}, "labels": {0: "rest", 1: "fist"}, "rest_label": 0}


@FUZZ
@given(field=st.sampled_from(sorted(MANIFEST) + ["derived", "field_regex", "group_by", "adc_range", "notch_hz",
                                                  "exclude", "subject", "label_names_from"]), value=JSON)
def test_manifests_with_any_field_value_are_accepted_or_refused_by_name(field, value):
    try:
        DatasetManifest.from_dict({**MANIFEST, field: value}, source="toy.yaml")
    except ManifestError as err:
        assert str(err).startswith("toy.yaml: ")


@FUZZ
@given(text=st.text(max_size=300))
def test_manifest_files_of_any_text_are_refused_by_name(text):
    path = scratch("m.yaml", text.encode())
    with pytest.raises(ManifestError, match=f"^{path}: "):
        DatasetManifest.from_yaml(path)


@FUZZ
@given(key=st.sampled_from(["optim.lr", "model.d_model", "data.batch_size", "run.seed", "dist.zero_stage",
                            "model.mask_ratio", "data.exclude_subjects", "preset", "optim", "nope"]),
       value=st.text(alphabet="0123456789.-+eE[]{},:naifxyz '\"", max_size=16))
def test_overrides_of_any_text_give_a_config_or_a_config_error(key, value):
    try:
        load_config(PretrainConfig, None, [f"{key}={value}"])
    except ConfigError:
        pass


@FUZZ
@given(text=st.text(max_size=200) | JSON.map(json.dumps))
def test_a_corpus_manifest_of_any_content_is_a_corpus_error(text):
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    (folder / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (folder / "manifest.json").write_text(text)
    try:
        Corpus(folder)
    except CorpusError as err:
        assert str(folder) in str(err)


# ---------------------------------------------------------------- the checkpoint loader

TINY = ModelConfig(n_features=8, d_model=16, n_layers=1, n_heads=2, n_fourier=4, n_time_frequencies=2,
                   tokenizer_hidden=8, codebook_size=4, codebook_dim=4, max_rank=4, max_groups=4, gain_features=[0])


@functools.lru_cache(maxsize=1)
def exported() -> dict[str, bytes]:
    """The files of a tiny model's export (made once; not a fixture, so a failing example does not print them)."""
    folder = export_inference(AEMGModel(TINY), TINY, Path(tempfile.mkdtemp(prefix="fuzz-")))
    return {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}


def loaded_or_refused(files: dict[str, bytes]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    for name, content in files.items():
        (folder / name).write_bytes(content)
    try:
        load_inference(folder)
    except CheckpointError as err:
        assert str(folder) in str(err)


@FUZZ
@given(field=st.sampled_from(sorted(json.loads(json.dumps(TINY.__dict__)))), value=JSON)
def test_checkpoint_configs_with_any_field_value_load_or_are_refused(field, value):
    export = exported()
    meta = json.loads(export["config.json"])
    meta["model"][field] = value
    loaded_or_refused({**export, "config.json": json.dumps(meta).encode()})


@FUZZ
@given(content=JSON.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200))
def test_checkpoint_configs_of_any_content_are_refused(content):
    loaded_or_refused({**exported(), "config.json": content})


@FUZZ
@given(data=st.data())
def test_mutated_weights_load_or_are_refused(data):
    export = exported()
    weights = bytearray(export["model.safetensors"])
    header_end = 8 + int.from_bytes(weights[:8], "little")
    for _ in range(data.draw(st.integers(1, 4))):
        # most mutations hit the length and the header, where parsing happens; some hit the tensors' bytes
        position = data.draw(st.integers(0, header_end - 1) | st.integers(0, len(weights) - 1))
        weights[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.none() | st.integers(0, len(weights)))
    loaded_or_refused({**export, "model.safetensors": bytes(weights[:cut])})


@FUZZ
@given(content=st.binary(max_size=600), length=st.integers(0, 2**64 - 1) | st.integers(0, 600))
def test_weights_of_any_content_are_refused(content, length):
    loaded_or_refused({**exported(), "model.safetensors": length.to_bytes(8, "little") + content})


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    model = AEMGModel(TINY)
    with __import__("torch").no_grad():
        next(model.parameters()).fill_(float("nan"))
    export_inference(model, TINY, tmp_path)
    with pytest.raises(CheckpointError, match="model.safetensors: tensor .* holds NaN or Inf"):
        load_inference(tmp_path)
