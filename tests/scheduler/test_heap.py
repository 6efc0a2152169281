import random

from orchestrator.scheduler.heap import DueHeap


def test_pop_due_returns_every_due_key_earliest_first_and_leaves_the_rest():
    heap = DueHeap[str]()
    for key, due in [("c", 30.0), ("a", 10.0), ("d", 40.0), ("b", 20.0)]:
        heap.push(key, due)

    assert heap.pop_due(25.0) == ["a", "b"]
    assert heap.peek() == 30.0
    assert sorted(heap) == ["c", "d"]
    assert heap.pop_due(25.0) == []


def test_pushing_a_key_again_moves_it_instead_of_adding_a_second_one():
    heap = DueHeap[str]()
    heap.push("a", 10.0)
    heap.push("a", 50.0)

    assert len(heap) == 1
    assert heap.due_time("a") == 50.0
    assert heap.pop_due(20.0) == []
    assert heap.pop_due(50.0) == ["a"]


def test_discarded_keys_never_come_out():
    heap = DueHeap[str]()
    heap.push("a", 1.0)
    heap.push("b", 2.0)
    heap.discard("a")
    heap.discard("missing")

    assert "a" not in heap
    assert heap.peek() == 2.0
    assert heap.pop_due(100.0) == ["b"]
    assert heap.peek() is None


def test_stale_items_are_compacted_so_the_heap_does_not_grow_with_moves():
    heap = DueHeap[int]()
    for key in range(100):
        heap.push(key, float(key))
    for round_ in range(50):
        for key in range(100):
            heap.push(key, float(key + round_))

    assert len(heap) == 100
    assert len(heap._heap) <= 2 * 100 + 64


def test_matches_a_sorted_list_under_random_moves():
    rng = random.Random(7)
    heap = DueHeap[int]()
    expected: dict[int, float] = {}
    for _ in range(2000):
        key = rng.randrange(50)
        if rng.random() < 0.2:
            heap.discard(key)
            expected.pop(key, None)
        else:
            due = rng.uniform(0, 100)
            heap.push(key, due)
            expected[key] = due
    cutoff = 60.0
    due_now = heap.pop_due(cutoff)

    assert due_now == sorted(
        (k for k, v in expected.items() if v <= cutoff), key=lambda k: expected[k]
    )
    assert set(heap) == {k for k, v in expected.items() if v > cutoff}
