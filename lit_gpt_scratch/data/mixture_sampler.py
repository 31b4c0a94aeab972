"""Training windows drawn from a mixture's sources in proportion to their weights.

    weights ─► schedule: the source of every global window (all ranks' windows of a batch, in
               order) ─► per source, its own seeded epoch permutation (a ``WindowSampler``)
               ─► this rank's windows of the batch: starts in the sources' concatenated stream

The schedule is a fixed function of the weights: source ``i``'s ``m``-th window falls at the
virtual time ``(m + 1/2) / w_i``, and the global windows are all sources' windows in time order
(ties to the source listed first). After any ``n`` windows, source ``i`` has drawn
``round(n * w_i / sum(w))`` of them to within ``(k + 1) / 2`` for ``k`` sources, under one
window for two; every window has ``block_size + 1`` tokens, so the weights are shares of the
tokens drawn. Nothing is random in the schedule, and window ``n``'s source is computed without
walking the ones before it, so any batch of a run follows from the config alone.

Each source draws its windows from its own epoch permutations (``WindowSampler`` with one rank
and batches of one, its seed ``seed + crc32(name)``): a source that runs through its windows
before the others starts its next epoch, on its own.

Ranks: batch ``b`` is global windows ``[b * G, (b + 1) * G)`` with ``G = batch_size x
world_size``; rank ``r`` takes the batch's windows ``r, r + world_size, ...``. The position a
checkpoint saves is the number of batches consumed (and each source's windows drawn), so
another layout with the same ``G``, or one whose ``G`` divides the windows consumed, continues
exactly; others are refused unless ``allow_approximate_resume``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import zlib
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from lit_gpt_scratch.data.samplers import (
    StartSampler,
    another_layout_message,
    another_seed_message,
    another_windows_message,
)
from lit_gpt_scratch.data.windows import WindowSampler
from lit_gpt_scratch.errors import UserError

log = logging.getLogger(__name__)


def source_seed(seed: int, name: str) -> int:
    """The seed of source ``name``'s epoch permutations: its own order, fixed by its name."""
    return seed + zlib.crc32(name.encode())


def _time(m: int, weight: float) -> float:
    """The virtual time of a source's ``m``-th window (from 0)."""
    return (m + 0.5) / weight


def _drawn_before(t: float, weight: float) -> int:
    """How many of a source's windows fall strictly before time ``t``."""
    m = max(0, math.ceil(t * weight - 0.5))
    while m > 0 and _time(m - 1, weight) >= t:  # the estimate, made exact for these floats
        m -= 1
    while _time(m, weight) < t:
        m += 1
    return m


def schedule(weights: list[float], start: int, count: int) -> tuple[list[int], list[int]]:
    """(each source's windows among global windows ``[0, start)``, the sources of global
    windows ``[start, start + count)`` in order)."""
    # Skip to a time before `start` windows, then merge the sources' windows in time order.
    t = max(0.0, (start - len(weights) - 1) / sum(weights))
    drawn = [_drawn_before(t, w) for w in weights]
    heap = [(_time(m, w), i) for i, (m, w) in enumerate(zip(drawn, weights, strict=True))]
    heapq.heapify(heap)
    position, before, order = sum(drawn), drawn, []
    while True:
        if position == start:
            before = list(drawn)
        if position == start + count:
            return before, order
        _, i = heapq.heappop(heap)
        if position >= start:
            order.append(i)
        drawn[i] += 1
        heapq.heappush(heap, (_time(drawn[i], weights[i]), i))
        position += 1


class MixtureSampler(Sampler[list[int]]):
    """Infinite, deterministic, resumable batches of window starts from a mixture's sources
    (use as ``batch_sampler`` over their concatenated train stream).

    Args:
        names: The sources' names, in ``data.sources`` order.
        weights: Their weights (any positive scale: only the shares count).
        sizes: Their train streams' lengths, in tokens.
        window: Tokens per sample (``block_size + 1``).
        batch_size: Windows per batch (per rank).
        seed: Base seed of the sources' epoch permutations.
        rank, world_size: This process's share of each batch's windows.
        corpora: Each source's corpus fingerprint (its position means nothing in another).
        allow_approximate_resume: Accept a saved state of other weights, sources, corpora,
            seed or layout (with a warning) instead of refusing it.
        source_samplers: Each source's own sampler of window starts (batch size 1, seeded
            with ``source_seed``), e.g. one of ``data.windows: document_start``; None: random
            windows (``WindowSampler``) in each.
    """

    def __init__(
        self,
        names: list[str],
        weights: list[float],
        sizes: list[int],
        window: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        corpora: list[str] | None = None,
        allow_approximate_resume: bool = False,
        source_samplers: list[StartSampler] | None = None,
    ):
        if window < 1 or batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"bad sampler geometry: window {window}, batch_size {batch_size}, "
                f"rank {rank} of world_size {world_size}"
            )
        self.names, self.weights = list(names), [float(w) for w in weights]
        self.window, self.seed = window, seed
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.per_batch = batch_size * world_size  # G: the global windows of one batch
        self.corpora = list(corpora) if corpora is not None else [""] * len(names)
        self.allow_approximate_resume = allow_approximate_resume
        # (n_sources + 1,): source i's windows start at offsets[i] in the concatenated stream
        self.offsets = [0, *itertools.accumulate(int(s) for s in sizes)]
        self.sources = source_samplers or [
            WindowSampler(size, window, 1, source_seed(seed, name))
            for name, size in zip(self.names, sizes, strict=True)
        ]
        self.windows = self.sources[0].windows  # data.windows: the same in every source
        self.origin = [0] * len(names)  # windows each source had drawn when this schedule began
        self.consumed = 0  # batches of this schedule consumed by training
        self._epochs: dict[int, tuple[int, torch.Tensor]] = {}  # source -> its current epoch

    # --- windows ---------------------------------------------------------------------------------

    def draws_at(self, consumed: int) -> list[tuple[int, int]]:
        """This rank's windows of batch ``consumed`` (from 0): (source index, start in that
        source's train stream), ``batch_size`` of them."""
        drawn, order = schedule(self.weights, consumed * self.per_batch, self.per_batch)
        draws = []
        for j, source in enumerate(order):
            if j % self.world_size == self.rank:
                draws.append((source, self._start(source, self.origin[source] + drawn[source])))
            drawn[source] += 1
        return draws

    def batch_at(self, consumed: int) -> torch.Tensor:
        """(batch_size,) this rank's starts of batch ``consumed``, in the concatenated stream."""
        return torch.tensor([self.offsets[i] + start for i, start in self.draws_at(consumed)])

    def _start(self, source: int, draw: int) -> int:
        """The start of ``source``'s window number ``draw`` (from 0): its epoch permutation's."""
        sampler = self.sources[source]
        epoch, index = divmod(draw, sampler.batches_per_epoch)
        cached = self._epochs.get(source)
        if cached is None or cached[0] != epoch:
            cached = (epoch, sampler.epoch_batches(epoch)[:, 0])  # (num_slots,)
            self._epochs[source] = cached
        return int(cached[1][index])

    def __iter__(self) -> Iterator[list[int]]:
        consumed = self.consumed  # resume at the consumed position, not the yielded
        while True:
            yield self.batch_at(consumed).tolist()
            consumed += 1

    # --- resume ----------------------------------------------------------------------------------

    def mark_consumed(self, n: int = 1) -> None:
        self.consumed += n

    def drawn(self) -> list[int]:
        """Each source's windows drawn by the consumed batches, from the run's start."""
        counts, _ = schedule(self.weights, self.consumed * self.per_batch, 0)
        return [o + c for o, c in zip(self.origin, counts, strict=True)]

    def state_dict(self) -> dict:
        return {
            "weights": dict(zip(self.names, self.weights, strict=True)),
            "corpus": dict(zip(self.names, self.corpora, strict=True)),
            "origin": dict(zip(self.names, self.origin, strict=True)),
            "drawn": dict(zip(self.names, self.drawn(), strict=True)),
            "batches": self.consumed,
            "seed": self.seed,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "windows": self.windows,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue at the consumed position of ``state``: exactly with the same sources,
        weights and corpora; else (``allow_approximate_resume``) each source from the windows
        it had drawn, scheduled anew by these weights."""
        mine = dict(zip(self.names, self.weights, strict=True))
        same_weights = list(state["weights"].items()) == list(mine.items())
        if not same_weights:
            self._refuse_unless_allowed(another_mixture_message(state["weights"], mine))
        other_corpus = [
            name
            for name, fingerprint in zip(self.names, self.corpora, strict=True)
            if name in state["corpus"] and state["corpus"][name] != fingerprint
        ]
        if other_corpus:
            self._refuse_unless_allowed(
                f"data.sources: source {other_corpus[0]!r} holds another corpus than the "
                "checkpoint's, where its saved data position means nothing; resume on the "
                "checkpoint's data, or set data.allow_approximate_resume: true to start it "
                "from its first window"
            )
        if state["seed"] != self.seed:
            self._refuse_unless_allowed(another_seed_message(self.seed, state["seed"]))
        saved_windows = state.get("windows", "random")  # a state from before data.windows
        if saved_windows != self.windows:
            self._refuse_unless_allowed(another_windows_message(self.windows, saved_windows))
        if not same_weights or other_corpus or saved_windows != self.windows:
            self.origin = [
                0 if name in other_corpus else int(state["drawn"].get(name, 0))
                for name in self.names
            ]
            self.consumed = 0
            return
        self.origin = [int(state["origin"][name]) for name in self.names]
        windows = state["batches"] * state["batch_size"] * state["world_size"]
        if windows % self.per_batch:
            saved = (state["world_size"], state["batch_size"])
            self._refuse_unless_allowed(
                another_layout_message(*saved, self.world_size, self.batch_size)
            )
        elif self.per_batch != state["batch_size"] * state["world_size"] and self.rank == 0:
            log.info(
                "resuming the mixture with %d windows a batch (world_size %d x batch_size %d): "
                "the data continues exactly, at global window %d",
                self.per_batch, self.world_size, self.batch_size, windows,
            )  # fmt: skip
        self.consumed = windows // self.per_batch

    def _refuse_unless_allowed(self, message: str) -> None:
        if not self.allow_approximate_resume:
            raise UserError(message)
        log.warning("approximate data resume: %s", message.split(";")[0])


def another_mixture_message(
    saved: dict[str, float] | None, configured: dict[str, float] | None
) -> str:
    """A resume into other weights or sources; None: one corpus (plain ``data.sources``)."""
    return (
        f"data.sources: the checkpoint's mixture weights are {_shown(saved)}, the config's "
        f"{_shown(configured)}: the saved data position is a position in the checkpoint's "
        "schedule; resume with its sources and weights, or set "
        "data.allow_approximate_resume: true to continue each source from its saved position "
        "with the new weights"
    )


def _shown(weights: dict[str, float] | None) -> str:
    if weights is None:
        return "none (one corpus)"
    return "{" + ", ".join(f"{name}: {weight:g}" for name, weight in weights.items()) + "}"
