"""Best-fit packing of conversations into windows of a fixed length."""

from __future__ import annotations

import bisect
from collections.abc import Iterable


def best_fit(lengths: Iterable[int], capacity: int) -> list[list[int]]:
    """Bins of item indices, each holding at most ``capacity`` in all: every item, in order,
    goes into the open bin with the least room that still holds it, or else into a new bin.
    Deterministic (ties go to the bin opened first); no item is split. Items longer than
    ``capacity`` are the caller's to cut or drop first (ValueError)."""
    bins: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for item, length in enumerate(lengths):
        if length > capacity:
            raise ValueError(f"item {item} of length {length} exceeds the capacity {capacity}")
        at = bisect.bisect_left(rooms, (length, -1))  # the tightest bin with room >= length
        if at < len(rooms):
            room, index = rooms.pop(at)
        else:
            room, index = capacity, len(bins)
            bins.append([])
        bins[index].append(item)
        if room - length > 0:
            bisect.insort(rooms, (room - length, index))
    return bins
