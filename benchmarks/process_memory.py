"""Peak resident memory of a command and of every process it starts, sampled from outside (benchmarks only).

A command that starts a local Ray is the root of a tree: Ray's daemons (GCS, raylet, agents) are its
children and Ray's worker processes are children of the raylet, so the root's recursive children hold
them all while it runs. Workers are told apart from the daemons by their command line: Ray names a
worker process "ray::<task or actor>" ("ray::IDLE" between tasks) once it runs, default_worker.py before.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import psutil

MB = 2**20


@dataclass
class TreePeaks:
    """Peak RSS in MB over one run of a command, by role."""

    wall_s: float
    driver_mb: float  # the command's own process
    total_mb: float  # peak of the sum over the whole tree (shared pages count once per process)
    ray_system_mb: float  # peak of the sum over Ray's daemons
    workers_mb: dict[str, float] = field(default_factory=dict)  # "pid title" -> that worker's peak
    # "pid title" -> that worker's peak of RSS less its shared pages: what the process holds itself, without the
    # object store's blocks it wrote or read (shared memory, one copy on the node, mapped into each process)
    workers_private_mb: dict[str, float] = field(default_factory=dict)

    @property
    def max_worker_mb(self) -> float:
        return max(self.workers_mb.values(), default=0.0)

    @property
    def max_worker(self) -> str:
        """The worker whose peak was the largest, "pid title" (empty without workers)."""
        return max(self.workers_mb, key=self.workers_mb.__getitem__, default="")


def is_ray_worker(cmdline: Sequence[str]) -> bool:
    return bool(cmdline) and (cmdline[0].startswith("ray::") or any("default_worker.py" in part for part in cmdline))


def run_sampled(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, log: Path | None = None,
                interval_s: float = 0.1) -> TreePeaks:
    """Run `cmd` to its end, sampling the RSS of its process tree every `interval_s`; RuntimeError (naming
    the log) when it fails. Its output goes to `log`, else nowhere."""
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below, after the run
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=dict(env) if env else None)
        peaks = _sample(proc, interval_s)
    finally:
        if log:
            out.close()
    peaks.wall_s = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}" + (f" (see {log})" if log else ""))
    return peaks


def _sample(proc: subprocess.Popen, interval_s: float) -> TreePeaks:
    root = psutil.Process(proc.pid)
    peaks = TreePeaks(wall_s=0.0, driver_mb=0.0, total_mb=0.0, ray_system_mb=0.0)
    workers: dict[int, tuple[float, str]] = {}  # pid -> (peak, the title it had then)
    private: dict[int, float] = {}  # pid -> peak of RSS less shared pages
    while proc.poll() is None:
        total = system = 0.0
        for p in [root, *_children(root)]:
            try:
                memory, cmdline = p.memory_info(), p.cmdline()
                rss = memory.rss / MB
            except psutil.Error:  # ended between the listing and the reading
                continue
            total += rss
            if p.pid == root.pid:
                peaks.driver_mb = max(peaks.driver_mb, rss)
            elif is_ray_worker(cmdline):
                title = cmdline[0] if cmdline[0].startswith("ray::") else "ray::starting"
                workers[p.pid] = max(workers.get(p.pid, (0.0, "")), (rss, title))
                private[p.pid] = max(private.get(p.pid, 0.0), (memory.rss - memory.shared) / MB)
            else:
                system += rss
        peaks.total_mb, peaks.ray_system_mb = max(peaks.total_mb, total), max(peaks.ray_system_mb, system)
        time.sleep(interval_s)
    peaks.workers_mb = {f"{pid} {title}": rss for pid, (rss, title) in workers.items()}
    peaks.workers_private_mb = {f"{pid} {title}": private[pid] for pid, (_, title) in workers.items()}
    return peaks


def _children(root: psutil.Process) -> list[psutil.Process]:
    try:
        return root.children(recursive=True)
    except psutil.Error:  # the root ended while listing
        return []
