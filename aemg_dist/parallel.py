"""Running many independent jobs on Ray tasks (or in-process) with bounded memory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import ray

from aemg_dist import storage


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start local Ray (or connect to `address`) unless this process is already connected."""
    if ray.is_initialized():
        return
    if not address and os.environ.get("RAY_ADDRESS"):
        # inside a Ray job (`aemg submit`) RAY_ADDRESS names the cluster: join it, never start a local Ray;
        # the job already has its runtime environment
        ray.init(log_to_driver=False)
        return
    # the workers get this process's storage settings (endpoint, credentials file), not just the cluster's
    env = storage.forwarded_env()
    runtime_env = {"env_vars": env} if env else None
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 runtime_env=runtime_env)


def ensure_shared(paths: Iterable[tuple[str, str | Path]], workers: int = 0, address: str | None = None) -> None:
    """Before Ray tasks read or write `paths` ((option name, path) pairs): start or join Ray as map_unordered
    would, and refuse a local path that some node cannot see (storage.require_shared). In-process
    (workers == 1) there is nothing to check."""
    if workers == 1:
        return
    ensure_ray(address, num_cpus=workers or None)
    for what, path in paths:
        storage.require_shared(path, what)


def map_unordered(fn: Callable[..., Any], items: Iterable[Any], *args: Any, workers: int = 0,
                  address: str | None = None, max_in_flight: int | None = None, per_task: int | None = 1) -> Iterator[Any]:
    """Yield fn(item, *args) for every item, in completion order.

    workers == 1 runs in this process (debugging, benchmarks); otherwise each `per_task` consecutive items
    are one Ray task with one CPU, at most `max_in_flight` (default 2 x cluster CPUs) submitted at once so
    results never pile up in the object store. Items of a few milliseconds each want per_task > 1: a task's
    round trip through the driver would otherwise leave the CPUs idle between them; per_task=None makes about
    8 tasks per cluster CPU.
    """
    if workers == 1:
        for item in items:
            yield fn(item, *args)
        return
    ensure_ray(address, num_cpus=workers or None)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    if per_task is None:
        items = list(items)
        per_task = max(1, len(items) // (8 * cpus))
    if per_task < 1:
        raise ValueError(f"per_task must be >= 1, got {per_task}")
    # named after fn, not the wrapper: what the dashboard, `ray list tasks` and the process titles show
    remote = ray.remote(num_cpus=1, max_retries=0)(_apply_each).options(name=getattr(fn, "__name__", "task"))
    limit = max_in_flight or max(2, 2 * cpus)
    shared = [ray.put(a) for a in args]  # ship the shared arguments once, not per task
    pending: list[ray.ObjectRef] = []
    for chunk in _chunks(items, per_task):
        if len(pending) >= limit:
            done, pending = ray.wait(pending, num_returns=1)
            yield from ray.get(done[0])
        pending.append(remote.remote(fn, chunk, *shared))
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield from ray.get(done[0])


def _apply_each(fn: Callable[..., Any], chunk: list[Any], *args: Any) -> list[Any]:
    return [fn(item, *args) for item in chunk]


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
