"""Shared fixtures: a local Ray for the whole session, and the real-data root; a skipped `claim` test fails
when AEMG_REQUIRE_CLAIMS=1 (tests/claims.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from claims import pytest_runtest_makereport  # noqa: F401  (a hook: pytest finds it here)

pytest_plugins = ["pytester"]  # tests/test_claims.py runs pytest on small test files
# one intra-op thread per process (this one, its subprocesses, Ray's workers): on 2 cores torch's default of one
# thread per core slows every process 10-20x while another is busy
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_root() -> Path:
    """`AEMG_DATA`, else ../shared/data next to the project root."""
    return Path(os.environ.get("AEMG_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = real_data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set AEMG_DATA)")
    return root


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """Two subjects of every tiny synthetic dataset, prepared once per session; tests only read it."""
    from preprocessing.prepare import prepare
    from preprocessing.synthetic import SyntheticConfig, synthetic_jobs

    path = tmp_path_factory.mktemp("tiny") / "corpus.zarr"
    jobs = [j for j in synthetic_jobs(SyntheticConfig(scale="tiny")) if j.subject_index < 2]
    assert prepare(jobs, path, workers=1, progress=False).ok
    return path


@pytest.fixture(scope="session")
def extra_corpus(tmp_path_factory) -> Path:
    """Another device's corpus (synth_extra, two subjects of the tiny protocol): recordings no other fixture holds,
    e.g. extra pretraining data beside tiny_corpus's."""
    from dataclasses import replace

    from preprocessing.prepare import prepare
    from preprocessing.synthetic import SyntheticConfig, default_datasets, synthetic_jobs

    path = tmp_path_factory.mktemp("extra") / "corpus.zarr"
    spec = replace(default_datasets("tiny")[0], name="synth_extra", n_subjects=2)
    assert prepare(synthetic_jobs(SyntheticConfig(scale="tiny", datasets=[spec])), path, workers=1, progress=False).ok
    return path


@pytest.fixture(scope="session")
def ray_local():
    """A 2-CPU local Ray, started once and always shut down."""
    import ray

    # workers import test helpers (tests/recordings.py) like the driver does, and the caller's PYTHONPATH
    # (e.g. a checkout other than the installed one) before the installed package
    path = os.pathsep.join([str(Path(__file__).resolve().parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _no_process_group_left():
    """A test that starts torch.distributed in this process (a DeepSpeed engine does) ends it: the forked ranks of a
    later test would inherit the group and fail to start their own ("initialize the default process group twice")."""
    yield
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
