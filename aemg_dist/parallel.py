"""Running many independent jobs on Ray tasks (or in-process) with bounded memory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import ray

from aemg_dist import storage


# A Ray task holds one CPU, but zarr's codec thread pool defaults to CPUs + 4 threads in every worker process; with
# several workers on a small machine those threads cost CPU time (context switches, caches) for no parallelism.
# One codec thread per worker; zarr's asynchronous I/O concurrency (S3) is a separate setting and stays.
WORKER_ENV = {"ZARR_THREADING__MAX_WORKERS": "1"}


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start local Ray (or connect to `address`) unless this process is already connected."""
    if ray.is_initialized():
        return
    if not address and os.environ.get("RAY_ADDRESS"):
        # inside a Ray job (`aemg submit`) RAY_ADDRESS names the cluster: join it, never start a local Ray;
        # the job already has its runtime environment
        ray.init(log_to_driver=False)
        return
    # the workers get this process's storage settings (endpoint, credentials file), not just the cluster's, and
    # WORKER_ENV
    env = {**WORKER_ENV, **storage.forwarded_env()}
    runtime_env = {"env_vars": env}
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
    items = list(items) if per_task is None else items
    per_task = _chunk_size(per_task, items)
    remote = _remote(_apply_each).options(name=_task_name(fn))
    limit = max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
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


def submit_each(fn: Callable[..., Any], items: Sequence[Any], *args: Any, address: str | None = None,
                per_task: int | None = None) -> list[ray.ObjectRef]:
    """Submit fn(item, *args) for every item at once, as Ray tasks of `per_task` consecutive items (None: about
    8 tasks per cluster CPU), and return one object ref per item, in the items' order: whoever needs an item's
    result waits for that item only, not for the others (map_unordered's consumer waits for all). The results
    stay in the object store until the refs are dropped: for many small results, not for large ones."""
    ensure_ray(address)
    per_task, remote = _chunk_size(per_task, items), _remote(_apply_each_returned)
    shared = [ray.put(a) for a in args]
    refs: list[ray.ObjectRef] = []
    for chunk in _chunks(items, per_task):
        out = remote.options(name=_task_name(fn), num_returns=len(chunk)).remote(fn, chunk, *shared)
        refs.extend(out if len(chunk) > 1 else [out])
    return refs


def _chunk_size(per_task: int | None, items: Any) -> int:
    """Items per task: `per_task`, or for None about 8 tasks per cluster CPU (`items` is then a sequence)."""
    if per_task is None:
        per_task = max(1, len(items) // (8 * int(ray.cluster_resources().get("CPU", 1))))
    if per_task < 1:
        raise ValueError(f"per_task must be >= 1, got {per_task}")
    return per_task


def _remote(wrapper: Callable[..., Any]) -> Any:
    """`wrapper` (which runs fn on a chunk of items) as a Ray remote function of one CPU."""
    return ray.remote(num_cpus=1, max_retries=0)(wrapper)


def _task_name(fn: Callable[..., Any]) -> str:
    """fn's name, not the wrapper's: what the dashboard, `ray list tasks` and the process titles show."""
    return getattr(fn, "__name__", "task")


def _apply_each(fn: Callable[..., Any], chunk: list[Any], *args: Any) -> list[Any]:
    return [fn(item, *args) for item in chunk]


def _apply_each_returned(fn: Callable[..., Any], chunk: list[Any], *args: Any) -> Any:
    """The chunk's results as the task's return values (num_returns=len(chunk)): Ray unpacks a list of n > 1,
    and takes the value itself as the one return of a task with num_returns=1."""
    results = _apply_each(fn, chunk, *args)
    return results if len(results) > 1 else results[0]


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
