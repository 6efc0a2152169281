"""Schedule entries ordered by when they are due next.

A binary heap with lazy deletion: moving or removing one entry costs O(log N), popping everything
due costs O(k log N) for k due entries, and nothing ever walks the whole schedule. Celery's own
scheduler re-reads and compares every entry on each send instead (O(N) per send).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterator
from itertools import count
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class DueHeap(Generic[K]):
    """Keys (entry ids) by due time (seconds since the epoch, a float).

    ``push`` adds a key or moves it; ``discard`` removes it. Superseded heap items stay in the
    heap until they reach the top (or until they outnumber the live ones, when the heap is
    rebuilt) and are skipped: each key has exactly one live due time.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._live: dict[K, tuple[float, int]] = {}
        self._counter = count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def __iter__(self) -> Iterator[K]:
        return iter(self._live)

    def due_time(self, key: K) -> float | None:
        item = self._live.get(key)
        return None if item is None else item[0]

    def push(self, key: K, due: float) -> None:
        """Schedule ``key`` at ``due``, replacing its earlier due time if it had one."""
        seq = next(self._counter)
        self._live[key] = (due, seq)
        heapq.heappush(self._heap, (due, seq, key))
        if len(self._heap) > 2 * len(self._live) + 64:
            self._compact()

    def discard(self, key: K) -> None:
        self._live.pop(key, None)

    def clear(self) -> None:
        self._heap.clear()
        self._live.clear()

    def peek(self) -> float | None:
        """The earliest due time, or None when the heap is empty."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[K]:
        """Remove and return every key due at or before ``now``, earliest first."""
        due: list[K] = []
        heap = self._heap
        while heap:
            when, seq, key = heap[0]
            if self._live.get(key) != (when, seq):
                heapq.heappop(heap)
                continue
            if when > now:
                break
            heapq.heappop(heap)
            del self._live[key]
            due.append(key)
        return due

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap and self._live.get(heap[0][2]) != (heap[0][0], heap[0][1]):
            heapq.heappop(heap)

    def _compact(self) -> None:
        self._heap = [(when, seq, key) for key, (when, seq) in self._live.items()]
        heapq.heapify(self._heap)
