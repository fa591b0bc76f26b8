"""The bad-input matrix (tests/bad_inputs.py): every case ends in its exit status and one line naming the culprit,
with no traceback, no hang and nothing half-written."""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest

from aemg_dist import cli
from bad_inputs import (CASES, holding, matches, read_only_supported, run_subprocess, tree_state, writable_again,
                        build_world)

TIME_LIMIT_S = 180.0  # every refusal comes before any work: seconds, even on a loaded machine (a hang is unbounded)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def test_the_matrix_covers_every_command():
    per_command = Counter(name.split(":")[0] for name in CASES)
    assert len(CASES) >= 60 and set(per_command) == {"prepare", "corpus", "tokenize", "pretrain", "evaluate", "sweep",
                                                     "submit"}, per_command


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, world, tmp_path, capsys, monkeypatch):
    for variable in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)
    expect = CASES[name](world, tmp_path)
    if expect.read_only and not read_only_supported():
        pytest.skip("no way to make a folder read-only here (root without unshare)")
    before = {path: tree_state(path) for path in expect.untouched}
    started = time.perf_counter()
    if expect.read_only and os.geteuid() == 0:  # permissions do not stop root: a read-only mount in a subprocess
        code, out, err = run_subprocess(expect.argv, expect.read_only, timeout=TIME_LIMIT_S)
    else:
        with holding(expect.held), writable_again(expect.read_only):
            code = cli.main(expect.argv)
        out, err = capsys.readouterr()
    assert time.perf_counter() - started < TIME_LIMIT_S
    assert "Traceback" not in out + err
    assert code == expect.code, err[-2000:]
    assert matches(expect, code, out, err), (out[-2000:], err[-2000:])
    for path in expect.absent:
        assert not path.exists(), f"{path} was left behind"
    for path, state in before.items():
        assert tree_state(path) == state, f"{path} was changed"
    if expect.after is not None:
        expect.after()


def test_debug_prints_the_traceback_and_keeps_the_status(world, tmp_path, capsys):
    argv = ["pretrain", "--config", "none.yaml", "--no-ray"]
    assert cli.main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert cli.main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("aemg pretrain: error:")


def test_a_runtime_failure_is_one_line_with_its_own_status(world, tmp_path, capsys, monkeypatch):
    import preprocessing.prepare

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(preprocessing.prepare.CorpusWriter, "write_manifest", broken)
    argv = ["prepare", "--manifest", str(world.manifest), "--source", str(world.data), "--out",
            str(tmp_path / "c.zarr"), "--workers", "1", "--quiet"]
    assert cli.main(argv) == cli.EXIT_RUNTIME
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["aemg prepare: failed: OSError: [Errno 28] No space left on device (run again "
                                        "with --debug for the traceback)"]


def test_python_m_maps_errors_of_every_module_to_their_status():
    """`python -m aemg_dist.cli` (how `aemg submit` runs a checkout) loads the module twice, as __main__ and as
    aemg_dist.cli: an error class of one copy must still map to its exit status."""
    code, out, err = run_subprocess(["submit", "--address", "http://127.0.0.1:1", "--", "python", "x.py"], [], 60)
    assert code == 2 and err.strip().splitlines() == [
        "aemg submit: error: the command after -- must be an aemg command, e.g. -- aemg pretrain --config ..."]
