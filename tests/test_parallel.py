"""map_unordered: every item's result once, whatever the items per task, in-process or on Ray tasks."""

from __future__ import annotations

import os

import pytest

from aemg_dist.parallel import map_unordered


def _square_and_pid(item: int, offset: int) -> tuple[int, int]:
    return item * item + offset, os.getpid()


def _task_name(item: int) -> str:
    import ray

    return ray.get_runtime_context().get_task_name()


@pytest.mark.parametrize("per_task", [1, 3, None])
def test_every_item_once_whatever_the_items_per_task(ray_local, per_task):
    results = list(map_unordered(_square_and_pid, range(20), 5, workers=2, per_task=per_task))
    assert sorted(r for r, _ in results) == [i * i + 5 for i in range(20)]
    assert os.getpid() not in {pid for _, pid in results}  # ran on Ray tasks


def test_in_process_and_bad_chunk_size(ray_local):
    assert [r for r, _ in map_unordered(_square_and_pid, [1, 2], 0, workers=1)] == [1, 4]
    with pytest.raises(ValueError, match="per_task"):
        list(map_unordered(_square_and_pid, [1, 2], 0, workers=2, per_task=0))


def test_tasks_are_named_after_the_function(ray_local):
    assert set(map_unordered(_task_name, range(4), workers=2, per_task=2)) == {"_task_name"}
