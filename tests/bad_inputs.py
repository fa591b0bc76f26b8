"""The bad-input matrix: every kind of bad input a user can give a command, and what the command must do.

A case builds its inputs in its own folder from a small clean world (a CSV dataset of 3 subjects x 2 files,
8 channels at 1 kHz; its corpus, tokens and a pretraining run) and says what must happen: the exit status,
a regular expression the one error line must match (naming the culprit), the paths that must be left
exactly as they were and those that must not exist afterwards (nothing half-written). Cases that need a
read-only place or an output folder held by another command say so; `run_case` arranges both.

Used by tests/test_bad_inputs.py (every case, in this process where it can) and by
benchmarks/bench_bad_inputs.py (every case in a subprocess with a time limit, to count outcomes of any checkout).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_PRETRAIN = REPO_ROOT / "configs" / "pretrain" / "tiny.yaml"
CHANNELS, FS, SECONDS = 8, 1000, 5
KEY = "tiny/2/1"  # the recording most cases damage (subject 2)
MANIFEST = f"""name: tiny
folder: tiny
pattern: "P{{subject}}/s{{session}}/g_{{rep}}_{{label}}.csv"
reader: {{kind: delimited, delimiter: ","}}
fs: 1000
units: uV
electrodes: {{layout: ring, n_channels: {CHANNELS}}}
labels: {{0: rest, 1: fist}}
rest_label: 0
"""


@dataclass
class World:
    """The clean inputs every case starts from (made once; cases copy what they damage)."""

    root: Path
    data: Path  # dataset root: tiny/P{1,2,3}/s1/g_0_{0,1}.csv
    manifest: Path
    corpus: Path
    tokens: Path
    run: Path  # a finished `aemg pretrain --no-ray` run


@dataclass
class Expect:
    argv: list[str]
    code: int
    message: str = ""  # regex of the one error line (exit >= 2), or of a line of the output (exit 0 or 1)
    untouched: list[Path] = field(default_factory=list)  # byte for byte as before
    absent: list[Path] = field(default_factory=list)  # must not exist afterwards
    read_only: list[Path] = field(default_factory=list)  # folders made read-only during the call
    held: list[Path] = field(default_factory=list)  # output folders another aemg command holds during the call
    after: Callable[[], None] | None = None  # further checks of what was written


# ---------------------------------------------------------------- the clean world

def emg(seed: int, label: int) -> np.ndarray:
    """SECONDS of 8-channel noise, with a 2 s burst on half the channels in a "fist" file."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((SECONDS * FS, CHANNELS)) * 5
    if label:
        x[1500:3500, :4] *= 12
    return x


def write_csv(path: Path, x: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, x, delimiter=",", fmt="%.3f")


def write_dataset(root: Path) -> Path:
    for subject in (1, 2, 3):
        for label in (0, 1):
            write_csv(root / "tiny" / f"P{subject}" / "s1" / f"g_0_{label}.csv", emg(10 * subject + label, label))
    return root


def build_world(root: Path) -> World:
    from aemg_dist.data import tokenize_corpus
    from aemg_dist.train import load_pretrain_config, pretrain
    from preprocessing.manifest import DatasetManifest, manifest_jobs
    from preprocessing.prepare import prepare

    root.mkdir(parents=True, exist_ok=True)
    data = write_dataset(root / "data")
    manifest = root / "tiny.yaml"
    manifest.write_text(MANIFEST)
    corpus, tokens, run = root / "corpus.zarr", root / "tokens", root / "run"
    assert prepare(manifest_jobs(DatasetManifest.from_yaml(manifest), data), corpus, workers=1, progress=False).ok
    tokenize_corpus(corpus, tokens, workers=1, progress=False)
    pretrain(load_pretrain_config(TINY_PRETRAIN, [
        f"data.tokens={tokens}", f"run.out={run}", "dist.ray=false", "data.batch_size=4", "optim.max_steps=3",
        "optim.warmup_steps=1", "run.checkpoint_every=3", "run.val_every=3", "run.log_every=1",
        "data.val_fraction=0"]))  # three keys all hash into a validation share of 0.1
    return World(root, data, manifest, corpus, tokens, run)


def copy(src: Path, dst: Path) -> Path:
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst


# ---------------------------------------------------------------- running a case

def tree_state(path: Path) -> dict[str, str]:
    """{relative path: content digest} of a file or folder ({} when absent): what "untouched" compares."""
    if not path.exists():
        return {}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest() for p in files}


@contextmanager
def holding(folders: list[Path]) -> Iterator[None]:
    """Other processes that hold each folder the way a running aemg command does, for the duration."""
    holders = []
    try:
        for folder in folders:
            script = ("import sys, time; from aemg_dist.validate import claim\n"
                      "with claim(sys.argv[1], 'out'):\n    print('held', flush=True); time.sleep(600)")
            proc = subprocess.Popen([sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, text=True,
                                    env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
            holders.append(proc)
            assert proc.stdout.readline().strip() == "held"
        yield
    finally:
        for proc in holders:
            proc.kill()
            proc.wait()


def read_only_supported() -> bool:
    """Whether a folder can be made read-only for a command: by permissions for a normal user; for root (whom
    permissions do not stop) by a read-only bind mount in a private mount namespace (`unshare -m`)."""
    if os.geteuid() != 0:
        return True
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode == 0


def run_subprocess(argv: list[str], read_only: list[Path], timeout: float,
                   checkout: Path = REPO_ROOT) -> tuple[int, str, str]:
    """`aemg argv` of `checkout` in a new process (exit status, stdout, stderr); read_only folders are
    bind-mounted read-only in a private mount namespace when root. A run past `timeout` is killed (status 124)."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "aemg_dist.cli", *argv]
    if read_only and os.geteuid() == 0:
        mounts = " && ".join(f'mount --bind "{p}" "{p}" && mount -o remount,ro,bind "{p}"' for p in read_only)
        command = ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "sh", *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=checkout)
    except subprocess.TimeoutExpired as err:
        return 124, str(err.stdout or ""), str(err.stderr or "")
    return done.returncode, done.stdout, done.stderr


@contextmanager
def writable_again(folders: list[Path]) -> Iterator[None]:
    """For a normal user: the folders read-only (permissions) for the duration."""
    modes = {p: p.stat().st_mode for p in folders}
    try:
        for p in folders:
            p.chmod(0o555)
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


# ---------------------------------------------------------------- the cases

CASES: dict[str, Callable[[World, Path], Expect]] = {}


def case(command: str) -> Callable:
    def register(build: Callable[[World, Path], Expect]) -> Callable:
        CASES[f"{command}:{build.__name__}"] = build
        return build
    return register


def prepare_argv(w: World, data: Path, out: Path | str, *extra: str, manifest: Path | None = None) -> list[str]:
    return ["prepare", "--manifest", str(manifest or w.manifest), "--source", str(data), "--out", str(out),
            "--workers", "1", "--quiet", *extra]


def damaged_data(w: World, tmp: Path, change: Callable[[np.ndarray], np.ndarray], files=("g_0_1.csv",)) -> Path:
    """A copy of the dataset whose subject-2 files `files` hold change(signal)."""
    data = copy(w.data, tmp / "data")
    for name in files:
        path = data / "tiny" / "P2" / "s1" / name
        write_csv(path, change(np.loadtxt(path, delimiter=",")))
    return data


def recording(corpus: Path, key: str = KEY) -> tuple[dict, np.ndarray]:
    from preprocessing.corpus import Corpus

    c = Corpus(corpus)
    return c.attrs(key), c.read(key)


def channel_dead(corpus: Path, channel: int, **flags: bool) -> Callable[[], None]:
    """After-check: `channel` of the damaged recording is flagged dead, out of channel_ok and counted by `corpus
    info`; the z-values of every channel stay in the range of EMG (no statistics made from repaired samples);
    `corpus check` passes."""
    def check() -> None:
        from preprocessing.corpus import Corpus, check_corpus, corpus_summary

        attrs, x = recording(corpus)
        assert "dead" in attrs["channel_quality"][channel] and not attrs["channel_ok"][channel], attrs["channel_quality"]
        assert sum(attrs["channel_ok"]) == CHANNELS - 1
        assert np.abs(x).max() < 200, np.abs(x).max(axis=0)
        assert corpus_summary(Corpus(corpus))[0]["bad_channels"] == 1
        assert check_corpus(corpus) == []
    return check


def failed_alone(corpus: Path, key: str = KEY) -> Callable[[], None]:
    """After-check: the other recordings were prepared, the failed one is not in the corpus in any form."""
    def check() -> None:
        from preprocessing.corpus import Corpus, check_corpus

        keys = Corpus(corpus).keys()
        assert key not in keys and len(keys) == 2, keys
        assert not (corpus / key).exists() and check_corpus(corpus) == []
    return check


# prepare: damaged source files ----------------------------------------------------------------------------

@case("prepare")
def nan_channel_whole_file(w: World, tmp: Path) -> Expect:  # the "one NaN channel passes silently"
    def nan0(x):
        x[:, 0] = np.nan
        return x
    out = tmp / "c.zarr"
    return Expect(prepare_argv(w, damaged_data(w, tmp, nan0), out), 0, r"0 failed", after=channel_dead(out, 0))


@case("prepare")
def nan_channel_45_percent(w: World, tmp: Path) -> Expect:
    def nan45(x):
        x[: int(0.45 * len(x)), 0] = np.nan
        return x
    out = tmp / "c.zarr"
    return Expect(prepare_argv(w, damaged_data(w, tmp, nan45, ("g_0_0.csv", "g_0_1.csv")), out), 0, r"0 failed",
                  after=channel_dead(out, 0))


@case("prepare")
def nan_channel_20_percent_is_repaired(w: World, tmp: Path) -> Expect:
    def nan20(x):
        x[1000:2000, 3] = np.nan
        return x
    out = tmp / "c.zarr"

    def check() -> None:
        attrs, x = recording(out)
        assert "nan_runs" in attrs["channel_quality"][3] and all(attrs["channel_ok"])
        # statistics of the recorded samples only: the repaired fifth does not shrink the scale
        assert 0.5 < attrs["normalization"]["scale"][3] / np.median(attrs["normalization"]["scale"]) < 2
        assert np.abs(x).max() < 200
    return Expect(prepare_argv(w, damaged_data(w, tmp, nan20, ("g_0_0.csv", "g_0_1.csv")), out), 0, r"0 failed",
                  after=check)


@case("prepare")
def inf_and_nan_scattered(w: World, tmp: Path) -> Expect:
    def scatter(x):
        x[::97, 5] = np.inf
        x[::89, 6] = -np.inf
        x[::83, 7] = np.nan
        return x
    out = tmp / "c.zarr"

    def check() -> None:
        attrs, x = recording(out)
        assert all(attrs["channel_ok"]) and np.isfinite(x).all() and np.abs(x).max() < 200
    return Expect(prepare_argv(w, damaged_data(w, tmp, scatter), out), 0, r"0 failed", after=check)


@case("prepare")
def clipped_channel_at_the_rails(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"

    def clip(x):
        x[:, 2] = np.clip(x[:, 2], -2.0, 2.0)  # ~70 % of the samples at the two rails
        return x
    return Expect(prepare_argv(w, damaged_data(w, tmp, clip, ("g_0_0.csv", "g_0_1.csv")), out), 0, r"0 failed",
                  after=channel_dead(out, 2))


@case("prepare")
def flat_recording_has_no_usable_channel(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"
    data = damaged_data(w, tmp, lambda x: np.full_like(x, 3.0), ("g_0_0.csv", "g_0_1.csv"))
    return Expect(prepare_argv(w, data, out), 1, r"FAILED tiny/2/1: .*no usable channel \(channel 0: flat/dead",
                  after=failed_alone(out))


@case("prepare")
def file_all_nan(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"
    data = damaged_data(w, tmp, lambda x: np.full_like(x, np.nan))
    return Expect(prepare_argv(w, data, out), 1, r"FAILED tiny/2/1: .*g_0_1.csv: no finite value", after=failed_alone(out))


def edit_text(w: World, tmp: Path, change: Callable[[str], str]) -> Path:
    data = copy(w.data, tmp / "data")
    path = data / "tiny" / "P2" / "s1" / "g_0_1.csv"
    path.write_text(change(path.read_text()))
    return data


@case("prepare")
def truncated_csv(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"
    data = edit_text(w, tmp, lambda t: t[: t.rindex(",", 0, len(t) - 30)])  # cut inside the last line
    return Expect(prepare_argv(w, data, out), 1, r"g_0_1.csv: malformed text \(line 5000 has [1-7] columns",
                  after=failed_alone(out))


@case("prepare")
def non_numeric_field(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"

    def change(text: str) -> str:
        lines = text.splitlines()
        lines[41] = "oops," + lines[41].split(",", 1)[1]
        return "\n".join(lines) + "\n"
    return Expect(prepare_argv(w, edit_text(w, tmp, change), out), 1,
                  r"g_0_1.csv: malformed text \(line 42, column 1: 'oops' is not a number", after=failed_alone(out))


@case("prepare")
def header_and_blank_lines_give_file_line_numbers(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"

    def change(text: str) -> str:
        lines = text.splitlines()
        lines[9] = ""  # blank lines are skipped by the parser but are lines of the file
        lines[99] = lines[99] + ",1.0"
        return "\n".join(lines) + "\n"
    return Expect(prepare_argv(w, edit_text(w, tmp, change), out), 1,
                  r"malformed text \(line 100 has 9 columns, the first data line 8", after=failed_alone(out))


@case("prepare")
def binary_garbage_as_csv(w: World, tmp: Path) -> Expect:
    data = copy(w.data, tmp / "data")
    (data / "tiny" / "P2" / "s1" / "g_0_1.csv").write_bytes(bytes(range(256)) * 40)
    out = tmp / "c.zarr"
    return Expect(prepare_argv(w, data, out), 1, r"g_0_1.csv: not a text file", after=failed_alone(out))


@case("prepare")
def empty_csv(w: World, tmp: Path) -> Expect:
    data = copy(w.data, tmp / "data")
    (data / "tiny" / "P2" / "s1" / "g_0_1.csv").write_text("")
    out = tmp / "c.zarr"
    return Expect(prepare_argv(w, data, out), 1, r"g_0_1.csv: empty file", after=failed_alone(out))


@case("prepare")
def wrong_channel_count(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"
    data = damaged_data(w, tmp, lambda x: x[:, :7])
    return Expect(prepare_argv(w, data, out), 1, r"g_0_1.csv: 7 columns, but the electrode layout needs 8 channels",
                  after=failed_alone(out))


@case("prepare")
def unknown_label_in_a_file_name_stops_at_once(w: World, tmp: Path) -> Expect:
    data = copy(w.data, tmp / "data")
    folder = data / "tiny" / "P2" / "s1"
    (folder / "g_0_1.csv").rename(folder / "g_0_7.csv")
    out = tmp / "c.zarr"
    return Expect(prepare_argv(w, data, out), 3, r"^aemg prepare: data error: .*g_0_7.csv: label 7 is not one of",
                  absent=[out])


@case("prepare")
def stray_file(w: World, tmp: Path) -> Expect:
    data = copy(w.data, tmp / "data")
    (data / "tiny" / "P2" / "s1" / "notes.csv").write_text("1,2\n")
    out = tmp / "c.zarr"
    return Expect(prepare_argv(w, data, out), 3, r"notes.csv: has the data files' extension but does not match",
                  absent=[out])


@case("prepare")
def unknown_label_in_a_label_column_is_reported(w: World, tmp: Path) -> Expect:
    data = tmp / "data"
    for subject in (1, 2, 3):
        x = emg(subject, 1)
        labels = np.repeat([0, 1], len(x) // 2)
        if subject == 2:
            labels[-100:] = 7
        write_csv(data / "lc" / f"P{subject}" / "s1" / "rec.csv", np.column_stack([x, labels]))
    manifest = tmp / "lc.yaml"
    manifest.write_text(MANIFEST.replace("name: tiny", "name: lc").replace("folder: tiny", "folder: lc")
                        .replace('"P{subject}/s{session}/g_{rep}_{label}.csv"', '"P{subject}/s{session}/rec.csv"')
                        .replace("kind: delimited,", "kind: label_column,"))
    out = tmp / "c.zarr"
    return Expect(prepare_argv(w, data, out, manifest=manifest), 1, r"FAILED lc/2/1: .*rec.csv: label 7 \(sample 4900\)",
                  after=failed_alone(out, "lc/2/1"))


@case("prepare")
def missing_data_folder(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"
    return Expect(prepare_argv(w, tmp / "nowhere", out), 3, r"dataset folder of tiny not found", absent=[out])


# prepare: manifests, configs and overrides ---------------------------------------------------------------------

def manifest_file(tmp: Path, text: str) -> Path:
    path = tmp / "m.yaml"
    path.write_text(text)
    return path


@case("prepare")
def manifest_fs_in_exponent_notation_is_a_number(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"
    manifest = manifest_file(tmp, MANIFEST.replace("fs: 1000", "fs: 1e3"))  # YAML 1.1 would read a string

    def check() -> None:
        assert recording(out)[0]["source_fs"] == 1000.0
    return Expect(prepare_argv(w, w.data, out, manifest=manifest), 0, r"3 written, 0 already complete, 0 failed",
                  after=check)


@case("prepare")
def manifest_yaml_syntax_error_keeps_line_and_column(w: World, tmp: Path) -> Expect:
    manifest = manifest_file(tmp, MANIFEST.replace("labels: {0: rest, 1: fist}", "labels: {0: rest, 1: fist"))
    out = tmp / "c.zarr"
    return Expect(prepare_argv(w, w.data, out, manifest=manifest), 2, r"m.yaml: not valid YAML \(.*line 9, column 11\)",
                  absent=[out])


@case("prepare")
def manifest_unknown_field(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"
    manifest = manifest_file(tmp, MANIFEST + "sampling_rate: 1000\n")
    return Expect(prepare_argv(w, w.data, out, manifest=manifest), 2, r"m.yaml: unknown field\(s\) \['sampling_rate'\]",
                  absent=[out])


@case("prepare")
def manifest_absurd_rate(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"
    return Expect(prepare_argv(w, w.data, out, manifest=manifest_file(tmp, MANIFEST.replace("fs: 1000", "fs: 5"))),
                  2, r"m.yaml: field `fs`: 5 Hz is absurd", absent=[out])


@case("prepare")
def manifest_missing(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"
    return Expect(prepare_argv(w, w.data, out, manifest=tmp / "none.yaml"), 2, r"none.yaml: manifest file not found",
                  absent=[out])


@case("prepare")
def manifest_is_binary(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"
    path = tmp / "m.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage" * 10)
    return Expect(prepare_argv(w, w.data, out, manifest=path), 2, r"m.yaml: not a YAML manifest file", absent=[out])


@case("prepare")
def override_of_the_wrong_type(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"
    return Expect(prepare_argv(w, w.data, out, "highpass_hz=abc"), 2,
                  r"in the override highpass_hz=abc: highpass_hz: Value 'abc'", absent=[out])


@case("prepare")
def override_nan(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"
    return Expect(prepare_argv(w, w.data, out, "notch_q=nan"), 2,
                  r"notch_q=nan \(from the override notch_q=nan\): expected a finite number", absent=[out])


def prepare_with_config(w: World, tmp: Path, text: str, message: str) -> Expect:
    """prepare given a --config file holding `text`; `message` may name the file as {config}."""
    config, out = tmp / "h.yaml", tmp / "c.zarr"
    config.write_text(text)
    return Expect(prepare_argv(w, w.data, out, "--config", str(config)), 2, message.format(config=re.escape(str(config))),
                  absent=[out])


@case("prepare")
def config_value_out_of_range_blames_the_file(w: World, tmp: Path) -> Expect:
    return prepare_with_config(w, tmp, "clip_fraction: 1.5\n",
                               r"clip_fraction=1.5 \(from {config}\): expected a number in \(0, 1\]")


@case("prepare")
def config_yaml_syntax_error_keeps_line_and_column(w: World, tmp: Path) -> Expect:
    return prepare_with_config(w, tmp, "target_fs: 1000\nhighpass_hz: [10\n",
                               r"h.yaml: not valid YAML \(.*line 3, column 1\)")


@case("prepare")
def config_file_holds_a_list(w: World, tmp: Path) -> Expect:
    return prepare_with_config(w, tmp, "- 1\n- 2\n", r"h.yaml: expected a mapping of settings \(key: value\), got a list")


# prepare: outputs ------------------------------------------------------------------------------------------

@case("prepare")
def out_with_an_unknown_scheme(w: World, tmp: Path) -> Expect:
    return Expect(prepare_argv(w, w.data, "foo://x/c.zarr"), 2, r"foo://x/c.zarr: unknown URI scheme 'foo'")


@case("prepare")
def out_is_a_file(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"
    out.write_text("not a corpus")
    return Expect(prepare_argv(w, w.data, out), 2, rf"--out {out}: it is a file; expected a folder", untouched=[out])


@case("prepare")
def out_below_a_file(w: World, tmp: Path) -> Expect:
    (tmp / "f").write_text("x")
    return Expect(prepare_argv(w, w.data, tmp / "f" / "c.zarr"), 2, rf"{tmp / 'f'} is a file; expected a folder",
                  untouched=[tmp / "f"])


@case("prepare")
def out_in_a_read_only_folder(w: World, tmp: Path) -> Expect:
    place = tmp / "ro"
    place.mkdir()
    return Expect(prepare_argv(w, w.data, place / "c.zarr"), 2, rf"cannot write in {place} \(a read-only disk",
                  absent=[place / "c.zarr"], read_only=[place])


@case("prepare")
def read_only_existing_corpus(w: World, tmp: Path) -> Expect:
    corpus = copy(w.corpus, tmp / "c.zarr")
    return Expect(prepare_argv(w, w.data, corpus), 2, rf"cannot write in {corpus} \(a read-only disk",
                  untouched=[corpus], read_only=[corpus])


@case("prepare")
def existing_corpus_of_other_settings(w: World, tmp: Path) -> Expect:
    corpus = copy(w.corpus, tmp / "c.zarr")
    return Expect(prepare_argv(w, w.data, corpus, "highpass_hz=15"), 3,
                  r"was prepared with other settings \{'highpass_hz': \(20.0, 15.0\)\}", untouched=[corpus])


@case("prepare")
def out_holds_other_files(w: World, tmp: Path) -> Expect:
    out = tmp / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    return Expect(prepare_argv(w, w.data, out), 3, r"holds other files and is not a corpus", untouched=[out])


@case("prepare")
def out_in_use_by_another_prepare(w: World, tmp: Path) -> Expect:
    out = tmp / "c.zarr"
    out.mkdir()
    return Expect(prepare_argv(w, w.data, out), 2, rf"--out {out} is in use by another aemg command \(pid \d+\)",
                  held=[out])


# corpus info / check ---------------------------------------------------------------------------------------

@case("corpus")
def check_unknown_scheme(w: World, tmp: Path) -> Expect:
    return Expect(["corpus", "check", "foo://x/c.zarr"], 2, r"foo://x/c.zarr: unknown URI scheme 'foo'")


@case("corpus")
def info_unknown_scheme(w: World, tmp: Path) -> Expect:
    return Expect(["corpus", "info", "s4://x/c.zarr"], 2, r"s4://x/c.zarr: unknown URI scheme 's4'")


@case("corpus")
def info_of_a_missing_corpus(w: World, tmp: Path) -> Expect:
    return Expect(["corpus", "info", str(tmp / "none.zarr")], 3, r"none.zarr is not a corpus \(no zarr.json\)")


@case("corpus")
def info_of_a_damaged_manifest(w: World, tmp: Path) -> Expect:
    corpus = copy(w.corpus, tmp / "c.zarr")
    (corpus / "manifest.json").write_text('{"format": "aemg-corpus/1", "recordings": [{"key": 1}]')
    return Expect(["corpus", "info", str(corpus)], 3, r"manifest.json: not a corpus manifest", untouched=[corpus])


@case("corpus")
def info_of_a_manifest_with_wrong_rows(w: World, tmp: Path) -> Expect:
    corpus = copy(w.corpus, tmp / "c.zarr")
    manifest = json.loads((corpus / "manifest.json").read_text())
    manifest["recordings"][0]["n_samples"] = "many"
    (corpus / "manifest.json").write_text(json.dumps(manifest))
    return Expect(["corpus", "info", str(corpus)], 3, r"manifest.json: not a corpus manifest \(invalid literal",
                  untouched=[corpus])


@case("corpus")
def check_of_a_damaged_manifest(w: World, tmp: Path) -> Expect:
    corpus = copy(w.corpus, tmp / "c.zarr")
    (corpus / "manifest.json").write_bytes(b"\x00\x01")
    return Expect(["corpus", "check", str(corpus)], 1, r"PROBLEM .*manifest.json: not a corpus manifest",
                  untouched=[corpus])


def chunk(corpus: Path, key: str = KEY) -> Path:
    return next(p for p in sorted((corpus / key / "emg").rglob("*")) if p.is_file() and p.name != "zarr.json")


@case("corpus")
def check_of_a_corrupted_chunk(w: World, tmp: Path) -> Expect:
    corpus = copy(w.corpus, tmp / "c.zarr")
    chunk(corpus).write_bytes(b"garbage" * 100)
    return Expect(["corpus", "check", str(corpus)], 1, rf"PROBLEM {KEY}: damaged \(.*cannot read samples",
                  untouched=[corpus])


@case("corpus")
def check_of_a_truncated_chunk(w: World, tmp: Path) -> Expect:
    corpus = copy(w.corpus, tmp / "c.zarr")
    path = chunk(corpus)
    path.write_bytes(path.read_bytes()[:50])  # c-blosc would read past these 50 bytes: refused before it decodes
    return Expect(["corpus", "check", str(corpus)], 1, rf"PROBLEM {KEY}: damaged \(.*damaged Blosc chunk: 50 bytes, "
                  r"its header states \d+", untouched=[corpus])


@case("corpus")
def check_of_damaged_recording_metadata(w: World, tmp: Path) -> Expect:
    corpus = copy(w.corpus, tmp / "c.zarr")
    (corpus / KEY / "zarr.json").write_text("{not json")
    return Expect(["corpus", "check", str(corpus)], 1, rf"PROBLEM {KEY}: listed in the manifest but missing or incomplete",
                  untouched=[corpus])


def edited_attributes(w: World, tmp: Path, name: str, channel: int, value: object) -> Path:
    """A copy of the corpus whose damaged recording has attributes[name][channel] = value."""
    corpus = copy(w.corpus, tmp / "c.zarr")
    meta = json.loads((corpus / KEY / "zarr.json").read_text())
    meta["attributes"][name][channel] = value
    (corpus / KEY / "zarr.json").write_text(json.dumps(meta))
    return corpus


@case("corpus")
def check_of_a_channel_ok_that_disagrees_with_its_flags(w: World, tmp: Path) -> Expect:
    corpus = edited_attributes(w, tmp, "channel_quality", 1, ["flat", "dead"])
    return Expect(["corpus", "check", str(corpus)], 1, rf"PROBLEM {KEY}: channel_ok .* disagrees with the quality flags",
                  untouched=[corpus])


@case("corpus")
def info_counts_dead_channels(w: World, tmp: Path) -> Expect:
    corpus = edited_attributes(w, tmp, "channel_ok", 4, False)
    return Expect(["corpus", "info", str(corpus)], 0, r"^tiny\s+3\s+3\s+3\s.*\s1$", untouched=[corpus])


# tokenize ------------------------------------------------------------------------------------------------

def tokenize_argv(corpus: Path | str, out: Path | str, *extra: str) -> list[str]:
    return ["tokenize", "--corpus", str(corpus), "--out", str(out), "--workers", "1", "--quiet", *extra]


@case("tokenize")
def corpus_with_an_unknown_scheme(w: World, tmp: Path) -> Expect:
    return Expect(tokenize_argv("foo://x/c.zarr", tmp / "t"), 2, r"foo://x/c.zarr: unknown URI scheme", absent=[tmp / "t"])


@case("tokenize")
def out_with_an_unknown_scheme(w: World, tmp: Path) -> Expect:
    return Expect(tokenize_argv(w.corpus, "foo://x/t"), 2, r"foo://x/t: unknown URI scheme", untouched=[w.corpus])


@case("tokenize")
def missing_corpus(w: World, tmp: Path) -> Expect:
    return Expect(tokenize_argv(tmp / "none.zarr", tmp / "t"), 3, r"none.zarr is not a corpus", absent=[tmp / "t"])


@case("tokenize")
def out_is_a_file(w: World, tmp: Path) -> Expect:
    (tmp / "t").write_text("x")
    return Expect(tokenize_argv(w.corpus, tmp / "t"), 2, r"it is a file; expected a folder", untouched=[tmp / "t"])


@case("tokenize")
def out_in_a_read_only_folder(w: World, tmp: Path) -> Expect:
    place = tmp / "ro"
    place.mkdir()
    return Expect(tokenize_argv(w.corpus, place / "t"), 2, rf"cannot write in {place}", absent=[place / "t"],
                  read_only=[place])


@case("tokenize")
def out_holds_a_complete_tokenization(w: World, tmp: Path) -> Expect:
    tokens = copy(w.tokens, tmp / "t")
    return Expect(tokenize_argv(w.corpus, tokens), 2, r"already holds a complete tokenization", untouched=[tokens])


@case("tokenize")
def out_holds_shards_of_another_config(w: World, tmp: Path) -> Expect:
    tokens = copy(w.tokens, tmp / "t")
    (tokens / "tokens.json").unlink()
    return Expect(tokenize_argv(w.corpus, tokens, "events.high=3"), 2, r"holds token shards of another tokenization",
                  untouched=[tokens])


@case("tokenize")
def out_holds_other_files(w: World, tmp: Path) -> Expect:
    (tmp / "t").mkdir()
    (tmp / "t" / "notes.txt").write_text("x")
    return Expect(tokenize_argv(w.corpus, tmp / "t"), 2, r"holds other files and is not a token folder",
                  untouched=[tmp / "t"])


@case("tokenize")
def negative_window_length(w: World, tmp: Path) -> Expect:
    return Expect(tokenize_argv(w.corpus, tmp / "t", "windows.length_s=-1"), 2,
                  r"windows.length_s=-1.0 \(from the override windows.length_s=-1\): expected a number in \(0, 3600\]",
                  absent=[tmp / "t"])


@case("tokenize")
def nan_threshold(w: World, tmp: Path) -> Expect:
    return Expect(tokenize_argv(w.corpus, tmp / "t", "events.high=nan"), 2, r"high must be a positive number, got nan",
                  absent=[tmp / "t"])


@case("tokenize")
def corrupted_corpus_chunk(w: World, tmp: Path) -> Expect:
    corpus = copy(w.corpus, tmp / "c.zarr")
    chunk(corpus).write_bytes(b"garbage" * 100)
    return Expect(tokenize_argv(corpus, tmp / "t"), 3, rf"c.zarr/{KEY}: cannot read samples", absent=[tmp / "t"])


@case("tokenize")
def out_in_use_by_another_tokenize(w: World, tmp: Path) -> Expect:
    (tmp / "t").mkdir()
    return Expect(tokenize_argv(w.corpus, tmp / "t"), 2, r"is in use by another aemg command", held=[tmp / "t"])


# pretrain ------------------------------------------------------------------------------------------------

def pretrain_argv(w: World, out: Path | str, *overrides: str, tokens: Path | str | None = None) -> list[str]:
    return ["pretrain", "--config", str(TINY_PRETRAIN), "--no-ray", f"data.tokens={tokens or w.tokens}",
            f"run.out={out}", "data.batch_size=4", "optim.max_steps=3", "data.val_fraction=0", "optim.warmup_steps=1",
            *overrides]


def pretrain_refused(w: World, tmp: Path, override: str, message: str) -> Expect:
    """pretrain with one bad override: a usage error, and no run folder made."""
    return Expect(pretrain_argv(w, tmp / "r", override), 2, message, absent=[tmp / "r"])


# (case, the one bad override, the error line); the batch larger than the data drew no batch and waited forever
for _name, _override, _message in [
    ("negative_learning_rate", "optim.lr=-1",
     r"optim.lr=-1.0 \(from the override optim.lr=-1\): expected a number in \(0, 1\]"),
    ("nan_learning_rate", "optim.lr=nan",
     r"optim.lr=nan .*expected a finite number"),
    ("negative_max_steps_shows_the_value", "optim.max_steps=-5",
     r"optim.max_steps=-5 .*expected a number in \[1, inf\)"),
    ("absurd_model_size", "model.n_layers=1000000000",
     r"model.n_layers=1000000000 .*expected a number in \[1, 192\]"),
    ("unknown_key", "optim.learning_rate=0.1",
     r"in the override optim.learning_rate=0.1: optim.learning_rate: Key 'learning_rate' not in"),
    ("unknown_preset", "preset=huge",
     r"unknown model preset 'huge'"),
    ("batch_larger_than_the_data", "data.batch_size=4096",
     r"data.batch_size=4096 is more than the \d+ training windows"),
    ("exclusions_leave_nothing", "data.exclude_datasets=[tiny]",
     r"no training windows left"),
]:
    CASES[f"pretrain:{_name}"] = functools.partial(pretrain_refused, override=_override, message=_message)


def pretrain_with_config(w: World, tmp: Path, text: str, message: str) -> Expect:
    """pretrain given a --config file holding `text`; `message` may name the file as {config}."""
    config = tmp / "p.yaml"
    config.write_text(text)
    argv = pretrain_argv(w, tmp / "r")
    argv[argv.index("--config") + 1] = str(config)
    return Expect(argv, 2, message.format(config=re.escape(str(config))), absent=[tmp / "r"])


@case("pretrain")
def value_from_the_config_file_blames_the_file(w: World, tmp: Path) -> Expect:
    return pretrain_with_config(w, tmp, "optim:\n  beta2: 1.5\n", r"optim.beta2=1.5 \(from {config}\)")


@case("pretrain")
def config_file_syntax_error(w: World, tmp: Path) -> Expect:
    return pretrain_with_config(w, tmp, "optim:\n  lr: 0.1\n   max_steps: 3\n",
                                r"p.yaml: not valid YAML \(.*line 3, column 13\)")


@case("pretrain")
def missing_tokens(w: World, tmp: Path) -> Expect:  # the "missing data.tokens leaves config.yaml behind"
    return Expect(pretrain_argv(w, tmp / "r", tokens=tmp / "none"), 2, r"data.tokens=.*none holds no tokens .*aemg tokenize",
                  absent=[tmp / "r"])


@case("pretrain")
def tokens_with_an_unknown_scheme(w: World, tmp: Path) -> Expect:
    return Expect(pretrain_argv(w, tmp / "r", tokens="foo://x/tokens"), 2, r"foo://x/tokens: unknown URI scheme",
                  absent=[tmp / "r"])


@case("pretrain")
def unfinished_tokenization(w: World, tmp: Path) -> Expect:
    tokens = copy(w.tokens, tmp / "t")
    (tokens / "tokens.json").unlink()
    return Expect(pretrain_argv(w, tmp / "r", tokens=tokens), 2, r"holds an unfinished tokenization",
                  absent=[tmp / "r"], untouched=[tokens])


@case("pretrain")
def damaged_tokens_manifest(w: World, tmp: Path) -> Expect:
    tokens = copy(w.tokens, tmp / "t")
    (tokens / "tokens.json").write_text("[1, 2")
    return Expect(pretrain_argv(w, tmp / "r", tokens=tokens), 3, r"tokens.json: not a manifest of `aemg tokenize`",
                  absent=[tmp / "r"])


@case("pretrain")
def changed_architecture_on_an_existing_run(w: World, tmp: Path) -> Expect:
    run = copy(w.run, tmp / "r")
    return Expect(pretrain_argv(w, run, "model.d_model=32"), 2,
                  r"holds a run with other settings \(model.d_model 64 -> 32\)", untouched=[run])


@case("pretrain")
def init_from_a_hostile_export(w: World, tmp: Path) -> Expect:
    export = copy(w.run / "export", tmp / "export")
    meta = json.loads((export / "config.json").read_text())
    meta["model"]["n_layers"] = 10**9
    (export / "config.json").write_text(json.dumps(meta))
    return Expect(pretrain_argv(w, tmp / "r", f"run.init_from={export}"), 3,
                  r"export/config.json: bad ModelConfig: n_layers=1000000000", absent=[tmp / "r"])


@case("pretrain")
def init_from_another_architecture(w: World, tmp: Path) -> Expect:
    return Expect(pretrain_argv(w, tmp / "r", f"run.init_from={w.run / 'export'}", "model.codebook_size=32"), 3,
                  r"model.safetensors \(the model to start from\) does not fit the model config", absent=[tmp / "r"])


@case("pretrain")
def out_is_a_file(w: World, tmp: Path) -> Expect:
    (tmp / "r").write_text("x")
    return Expect(pretrain_argv(w, tmp / "r"), 2, r"run.out .*: it is a file; expected a folder", untouched=[tmp / "r"])


@case("pretrain")
def out_in_a_read_only_folder(w: World, tmp: Path) -> Expect:
    place = tmp / "ro"
    place.mkdir()
    return Expect(pretrain_argv(w, place / "r"), 2, rf"run.out .*cannot write in {place}", absent=[place / "r"],
                  read_only=[place])


@case("pretrain")
def out_in_use_by_another_pretrain(w: World, tmp: Path) -> Expect:
    run = copy(w.run, tmp / "r")
    return Expect(pretrain_argv(w, run), 2, r"run.out .* is in use by another aemg command", held=[run])


@case("pretrain")
def batch_not_divisible_by_the_workers(w: World, tmp: Path) -> Expect:
    argv = [a for a in pretrain_argv(w, tmp / "r", "data.batch_size=5") if a != "--no-ray"]
    return Expect(argv, 2, r"data.batch_size 5 must be divisible by dist.num_workers 2", absent=[tmp / "r"])


# evaluate: hostile checkpoints and paths ---------------------------------------------------------------------

def evaluate_argv(w: World, checkpoint: Path | str, out: Path | str, *extra: str) -> list[str]:
    return ["evaluate", "--checkpoint", str(checkpoint), "--corpus", str(w.corpus), "--out", str(out), "--workers",
            "1", "--quiet", "--methods", "aemg_probe", *extra]


def hostile_checkpoint(w: World, tmp: Path, change: Callable[[Path], None], message: str) -> Expect:
    """evaluate with a copy of the run whose export/ `change` damaged: a data error naming the file, before any
    window is tokenized (OUT is never made)."""
    run = copy(w.run, tmp / "run")
    change(run / "export")
    return Expect(evaluate_argv(w, run, tmp / "out"), 3, message, absent=[tmp / "out"])


def config_json(**changes: object) -> Callable[[Path], None]:
    """Set model fields (or, under the key "format_version", the version) in an export's config.json."""
    def change(export: Path) -> None:
        meta = json.loads((export / "config.json").read_text())
        meta.update({k: v for k, v in changes.items() if k == "format_version"})
        meta["model"].update({k: v for k, v in changes.items() if k != "format_version"})
        (export / "config.json").write_text(json.dumps(meta))
    return change


def write(name: str, content: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """Replace an export file by content(its bytes)."""
    def change(export: Path) -> None:
        (export / name).write_bytes(content((export / name).read_bytes()))
    return change


# (case, how the export is damaged, the error line); a billion layers was the hang
for _name, _change, _message in [
    ("checkpoint_of_a_billion_layers", config_json(n_layers=10**9),
     r"export/config.json: bad ModelConfig: n_layers=1000000000: expected a number in \[1, 192\]"),
    ("checkpoint_of_a_huge_width", config_json(d_model=10**9),
     r"config.json: bad ModelConfig: d_model=1000000000: expected a number in \[1, 8192\]"),
    ("checkpoint_config_of_the_wrong_type", config_json(codebook_size="many"),
     r"config.json: bad ModelConfig: codebook_size: Value 'many'"),
    ("checkpoint_config_is_a_list", write("config.json", lambda _: b"[1, 2, 3]"),
     r"config.json: expected an object with format_version"),
    ("checkpoint_config_is_not_json", write("config.json", lambda _: os.urandom(300)),
     r"config.json: not valid JSON"),
    ("checkpoint_config_is_huge", write("config.json", lambda _: b" " * 10**6 + b"{}"),
     r"config.json: 1000002 bytes is not an exported config"),
    ("checkpoint_of_another_format_version", config_json(format_version=7),
     r"config.json: format_version 7 is not supported"),
    ("random_bytes_as_weights", write("model.safetensors", lambda _: os.urandom(4096)),
     r"model.safetensors: not a safetensors file of this model"),
    ("truncated_weights", write("model.safetensors", lambda data: data[:-1000]),
     r"model.safetensors: the header describes \d+ bytes of data but the file holds"),
    ("weights_of_another_architecture", config_json(codebook_size=32),
     r"model.safetensors does not fit the model config: .*wrong shapes"),
]:
    CASES[f"evaluate:{_name}"] = functools.partial(hostile_checkpoint, change=_change, message=_message)


@case("evaluate")
def damaged_run_config(w: World, tmp: Path) -> Expect:
    run = copy(w.run, tmp / "run")
    (run / "config.yaml").write_text("data: [1\n")
    return Expect(evaluate_argv(w, run, tmp / "out"), 3, r"run/config.yaml: not the config of an `aemg pretrain` run",
                  absent=[tmp / "out"])


@case("evaluate")
def missing_checkpoint(w: World, tmp: Path) -> Expect:
    return Expect(evaluate_argv(w, tmp / "none", tmp / "out"), 2, r"none is not a finished `aemg pretrain` run",
                  absent=[tmp / "out"])


@case("evaluate")
def missing_corpus(w: World, tmp: Path) -> Expect:
    argv = evaluate_argv(w, w.run, tmp / "out")
    argv[argv.index("--corpus") + 1] = str(tmp / "none.zarr")
    return Expect(argv, 3, r"none.zarr is not a corpus", absent=[tmp / "out"])


@case("evaluate")
def out_with_an_unknown_scheme(w: World, tmp: Path) -> Expect:
    return Expect(evaluate_argv(w, w.run, "foo://x/out"), 2, r"foo://x/out: unknown URI scheme")


@case("evaluate")
def out_is_a_file(w: World, tmp: Path) -> Expect:  # a bare "[Errno 17] File exists" before
    (tmp / "out").write_text("x")
    return Expect(evaluate_argv(w, w.run, tmp / "out"), 2, r"--out .*out: it is a file; expected a folder",
                  untouched=[tmp / "out"])


@case("evaluate")
def budget_out_of_range(w: World, tmp: Path) -> Expect:
    return Expect(evaluate_argv(w, w.run, tmp / "out", "--budgets", "0,150"), 2,
                  r"budgets=\[0.0, 150.0\] .*expected a number in \[0, 100\]", absent=[tmp / "out"])


@case("evaluate")
def nan_test_percent(w: World, tmp: Path) -> Expect:
    return Expect(evaluate_argv(w, w.run, tmp / "out", "test_percent=nan"), 2, r"test_percent=nan .*finite number",
                  absent=[tmp / "out"])


@case("evaluate")
def missing_splits_file(w: World, tmp: Path) -> Expect:
    return Expect(evaluate_argv(w, w.run, tmp / "out", "--splits", str(tmp / "none.yaml"), "--role", "test"), 2,
                  r"splits file .*none.yaml does not exist", absent=[tmp / "out"])


@case("evaluate")
def out_of_another_evaluation(w: World, tmp: Path) -> Expect:
    out = tmp / "out"
    out.mkdir()
    (out / "trials.jsonl").write_text('{"trials": []}\n')
    (out / "evaluate.yaml").write_text("budgets: [0.0]\n")
    return Expect(evaluate_argv(w, w.run, out), 2, r"holds trials of an evaluation with other settings",
                  untouched=[out])


# sweep -----------------------------------------------------------------------------------------------------

def sweep_file(w: World, tmp: Path, **changes: object) -> Path:
    spec = {"pretrain_config": str(TINY_PRETRAIN), "pretrain_overrides": [f"data.tokens={w.tokens}"],
            "grid": {"model.codebook_size": [16]}, "out": str(tmp / "sweep"),
            "evaluation": {"corpus": str(w.corpus), "methods": ["aemg_probe"]}}
    spec.update(changes)
    path = tmp / "sweep.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


@case("sweep")
def config_missing(w: World, tmp: Path) -> Expect:
    return Expect(["sweep", "--config", str(tmp / "none.yaml")], 2, r"config file .*none.yaml does not exist")


@case("sweep")
def empty_grid(w: World, tmp: Path) -> Expect:
    return Expect(["sweep", "--config", str(sweep_file(w, tmp, grid={}))], 2, r"grid must map at least one",
                  absent=[tmp / "sweep"])


@case("sweep")
def grid_value_out_of_range(w: World, tmp: Path) -> Expect:
    return Expect(["sweep", "--config", str(sweep_file(w, tmp, grid={"model.mask_ratio": [1.5]}))], 2,
                  r"grid configuration mask_ratio-1.5: .*model.mask_ratio=1.5", absent=[tmp / "sweep"])


@case("sweep")
def tokens_missing(w: World, tmp: Path) -> Expect:
    path = sweep_file(w, tmp, pretrain_overrides=[f"data.tokens={tmp / 'none'}"])
    return Expect(["sweep", "--config", str(path)], 2, r"data.tokens=.*none holds no tokens", absent=[tmp / "sweep"])


@case("sweep")
def corpus_missing(w: World, tmp: Path) -> Expect:
    path = sweep_file(w, tmp, evaluation={"corpus": str(tmp / "none.zarr"), "methods": ["aemg_probe"]})
    return Expect(["sweep", "--config", str(path)], 3, r"none.zarr is not a corpus", absent=[tmp / "sweep"])


@case("sweep")
def out_is_a_file(w: World, tmp: Path) -> Expect:
    (tmp / "sweep").write_text("x")
    return Expect(["sweep", "--config", str(sweep_file(w, tmp))], 2, r"out .*sweep: it is a file",
                  untouched=[tmp / "sweep"])


@case("sweep")
def out_with_an_unknown_scheme(w: World, tmp: Path) -> Expect:
    return Expect(["sweep", "--config", str(sweep_file(w, tmp, out="foo://x/sweep"))], 2,
                  r"out=foo://x/sweep: a sweep writes its results to a local or mounted path")


@case("sweep")
def existing_sweep_without_resume(w: World, tmp: Path) -> Expect:
    (tmp / "sweep" / "tune").mkdir(parents=True)
    (tmp / "sweep" / "sweep.yaml").write_text("out: x\n")
    return Expect(["sweep", "--config", str(sweep_file(w, tmp))], 2, r"holds a sweep already: continue it with --resume",
                  untouched=[tmp / "sweep"])


@case("sweep")
def asha_reduction_factor_one(w: World, tmp: Path) -> Expect:
    return Expect(["sweep", "--config", str(sweep_file(w, tmp)), "asha.reduction_factor=1"], 2,
                  r"asha.reduction_factor=1 \(from the override asha.reduction_factor=1\): expected a number in \[2, inf\)",
                  absent=[tmp / "sweep"])


@case("sweep")
def negative_resources(w: World, tmp: Path) -> Expect:
    return Expect(["sweep", "--config", str(sweep_file(w, tmp)), "resources.evaluate.cpus=-1"], 2,
                  r"resources.evaluate.cpus=-1.0 .*expected a number in \[0, inf\)", absent=[tmp / "sweep"])


# submit ----------------------------------------------------------------------------------------------------

@case("submit")
def relative_output_path(w: World, tmp: Path) -> Expect:
    return Expect(["submit", "--address", "http://127.0.0.1:1", "--", "aemg", "pretrain", "run.out=runs/x"], 2,
                  r"run.out=runs/x is a relative path")


@case("submit")
def unknown_uri_scheme(w: World, tmp: Path) -> Expect:
    return Expect(["submit", "--address", "http://127.0.0.1:1", "--", "aemg", "tokenize", "--corpus", "/c.zarr",
                   "--out", "foo://bucket/t"], 2, r"foo://bucket/t: unknown URI scheme 'foo'")


@case("submit")
def not_an_aemg_command(w: World, tmp: Path) -> Expect:
    return Expect(["submit", "--address", "http://127.0.0.1:1", "--", "python", "x.py"], 2, r"must be an aemg command")


@case("submit")
def no_address(w: World, tmp: Path) -> Expect:  # run without RAY_ADDRESS and RAY_API_SERVER_ADDRESS
    return Expect(["submit", "--", "aemg", "corpus", "info", "/c.zarr"], 2, r"give --address")


@case("submit")
def bad_environment_variable(w: World, tmp: Path) -> Expect:
    return Expect(["submit", "--address", "http://127.0.0.1:1", "--env", "AWS_REGION", "--", "aemg", "corpus", "info",
                   "/c.zarr"], 2, r"--env takes KEY=VALUE")


# ---------------------------------------------------------------- outcomes

def outcome(exp: Expect, code: int, out: str, err: str, seconds: float, limit: float,
            before: dict[Path, dict[str, str]]) -> str:
    """How a command met a case: "clear" (the status and one line naming the culprit, nothing half-written),
    "traceback", "hang", "half-written" (a path left that should not be, or one changed that should not be; before:
    tree_state of exp.untouched from before the call), "silent" (exit 0 or 1 with bad data let through) or
    "unclear" (another status or message)."""
    if code == 124 or seconds >= limit:
        return "hang"
    if "Traceback (most recent call last)" in out + err:
        return "traceback"
    if any(p.exists() for p in exp.absent) or any(tree_state(p) != state for p, state in before.items()):
        return "half-written"
    if exp.after is not None and code in (0, 1):
        try:
            exp.after()
        except Exception:  # noqa: BLE001 - any failed check means bad data got through
            return "silent"
    if code != exp.code:
        return "unclear"
    return "clear" if matches(exp, code, out, err) else "unclear"


def error_lines(command: str, err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"aemg {command}: ")]


def matches(exp: Expect, code: int, out: str, err: str) -> bool:
    if code >= 2:
        lines = error_lines(exp.argv[0], err)
        return len(lines) == 1 and lines[0] == err.strip().splitlines()[-1] and bool(re.search(exp.message, lines[0]))
    return any(re.search(exp.message, line) for line in out.splitlines())
