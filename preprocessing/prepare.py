"""`aemg prepare`: source recordings -> harmonized Zarr corpus, in parallel Ray tasks.

A source is anything that yields jobs with a `key` ("dataset/subject/session") and a
`load() -> RawRecording`: dataset manifests (`manifest.ManifestJob`) and the synthetic
generator (`synthetic.SyntheticJob`). Each job is read, harmonized and written by one task;
a job that fails is reported with its file and problem and the others go on. Complete
recordings already in the corpus are skipped, so a re-run after a crash or with more
sources only does what is missing.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from tqdm import tqdm

from aemg_dist import storage
from aemg_dist.config import save_config
from aemg_dist.parallel import ensure_shared, map_unordered
from aemg_dist.validate import claim, require_output

from .corpus import CorpusWriter, RecordingEntry, check_corpus_output
from .errors import ManifestError
from .harmonize import HarmonizeConfig
from .recording import RawRecording

PREPARE_CONFIG = "prepare.yaml"  # the resolved settings of the last prepare


class SourceJob(Protocol):
    @property
    def key(self) -> str: ...

    def load(self) -> RawRecording: ...


@dataclass
class JobResult:
    key: str
    error: str | None = None
    emg_seconds: float = 0.0  # duration of the recording written (source time)


@dataclass
class PrepareReport:
    out: str  # a local folder or a URI
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    entries: list[RecordingEntry] = field(default_factory=list)
    wall_seconds: float = 0.0
    emg_seconds_written: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [f"corpus: {self.out}  ({len(self.entries)} recordings; {len(self.written)} written, "
                 f"{len(self.skipped)} already complete, {len(self.failed)} failed) in {self.wall_seconds:.1f} s"]
        lines += [f"  FAILED {key}: {problem}" for key, problem in self.failed]
        return "\n".join(lines)


def prepare_job(job: SourceJob, out: str, config: HarmonizeConfig) -> JobResult:
    """Read, harmonize and write one recording. Runs inside a Ray task; never raises."""
    try:
        raw = job.load()
        CorpusWriter(out, config).write_raw(raw)  # streamed: memory bounded by config.chunk_seconds
        return JobResult(job.key, emg_seconds=raw.n_samples / raw.fs)
    except Exception as err:  # noqa: BLE001 - one bad recording must not stop the others
        message = str(err) if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: {err}"
        return JobResult(job.key, error=message)


def prepare(jobs: Sequence[SourceJob], out: str | Path, config: HarmonizeConfig | None = None, *,
            workers: int = 0, address: str | None = None, progress: bool = True) -> PrepareReport:
    """Prepare every job into the corpus at `out`; returns what was written, skipped and failed.

    `out` is checked before anything starts (a writable folder, new, empty or a corpus of the same settings)
    and held for the run (a second prepare on it is refused); the resolved settings go to OUT/prepare.yaml.
    workers: 1 = in this process; 0 = one Ray task per job on all local CPUs (or the cluster at `address`);
    n > 1 = a local Ray with n CPUs.
    """
    config = config or HarmonizeConfig()
    start = time.perf_counter()
    out = storage.absolute(out)
    duplicates = sorted(k for k, n in Counter(job.key for job in jobs).items() if n > 1)
    if duplicates:
        raise ManifestError(f"two sources map to the same recording key: {duplicates[:5]} (their manifests' names or "
                            "subject/session templates collide)")
    require_output(out, "--out")
    check_corpus_output(out, config)
    with claim(out, "--out"):
        writer = CorpusWriter(out, config)
        report = PrepareReport(out=out)
        todo = []
        for job in jobs:
            (report.skipped.append(job.key) if writer.is_complete(job.key) else todo.append(job))
        writer.ensure_parents([job.key for job in todo])
        ensure_shared([("--out", out)], workers, address)  # every task writes its recording there
        results = map_unordered(prepare_job, todo, out, config, workers=workers, address=address)
        for result in tqdm(results, total=len(todo), desc="prepare", unit="rec", disable=not progress or not todo):
            if result.error is None:
                report.written.append(result.key)
                report.emg_seconds_written += result.emg_seconds
            else:
                report.failed.append((result.key, result.error))
        report.entries = writer.write_manifest()
        save_config(config, storage.join(out, PREPARE_CONFIG))
    report.wall_seconds = time.perf_counter() - start
    return report
