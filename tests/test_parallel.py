"""map_unordered: every item's result once, whatever the items per task, in-process or on Ray tasks; submit_each:
one object ref per item, in the items' order."""

from __future__ import annotations

import os

import pytest

from aemg_dist.parallel import map_unordered, submit_each


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


def _fails_on_three(item: int) -> int:
    if item == 3:
        raise KeyError(f"item {item}")
    return item


@pytest.mark.parametrize("per_task", [1, 4, None])
def test_submit_each_gives_one_ref_per_item_in_order(ray_local, per_task):
    """Chunks of one item and of several (the last one short) both come back as one value per item."""
    import ray

    refs = submit_each(_square_and_pid, list(range(9)), 5, per_task=per_task)
    assert len(refs) == 9
    results = ray.get(refs)
    assert [r for r, _ in results] == [i * i + 5 for i in range(9)]
    assert os.getpid() not in {pid for _, pid in results}
    assert ray.get(submit_each(_task_name, [0, 1], per_task=2)) == ["_task_name"] * 2
    failing = submit_each(_fails_on_three, [1, 2, 3, 4], per_task=1)
    assert ray.get(failing[:2]) == [1, 2]  # one item's failure is that item's
    with pytest.raises(KeyError, match="item 3"):
        ray.get(failing[2])
