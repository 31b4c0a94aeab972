"""What every training sampler shares: seeded epoch permutations, rank striding, exact resume.

A sampler has ``num_slots`` places a window may start; a subclass says where slot ``k`` starts
in epoch ``e`` (``WindowSampler``: a random offset plus ``k`` windows; ``DocumentSampler``: the
``k``-th of an explicit array of starts). ``StartSampler`` permutes the slots each epoch, deals
them to the ranks, and counts the batches training consumed, which is the position a checkpoint
saves and a resume continues from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from lit_gpt_scratch.errors import UserError

log = logging.getLogger(__name__)


class StartSampler(Sampler[list[int]]):
    """Infinite, seeded, resumable batches of window start positions (use as ``batch_sampler``).

    Epoch ``e`` seeds ``torch.Generator().manual_seed(seed + e)``; the subclass draws from it
    first what the epoch needs (``epoch_layout``), then the slots are permuted with
    ``torch.randperm(num_slots)``. Rank ``r`` takes permutation entries ``r, r + world_size,
    ...``; each rank gets ``num_slots // world_size // batch_size`` batches per epoch (the rest
    is dropped), so ranks stay in step and none waits for a batch that never comes.

    Resume: the DataLoader (and Lightning's fetcher) draw batches ahead of training, so what the
    sampler has *yielded* is not what the model has *seen*. The trainer calls
    ``mark_consumed()`` once per training batch; ``state_dict()`` reports that consumed
    position and ``__iter__`` (after ``load_state_dict``) starts at the first unconsumed batch.
    The state names the sampler's ``windows`` kind: a position under another kind is refused
    (or, with ``allow_approximate_resume``, the new kind starts from its first window).
    """

    windows = ""  # data.windows of this kind of sampler

    def __init__(
        self,
        num_slots: int,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        allow_approximate_resume: bool,
        what: str,
    ):
        """``what``: the slots in words, for the error when they make no batch."""
        self.num_slots, self.seed, self.batch_size = num_slots, seed, batch_size
        self.rank, self.world_size = rank, world_size
        self.allow_approximate_resume = allow_approximate_resume
        self.batches_per_epoch = num_slots // world_size // batch_size
        if self.batches_per_epoch == 0:
            raise UserError(
                f"{what}, fewer than one batch of batch_size {batch_size} x world_size {world_size}"
            )
        self.epoch = 0  # consumed position: the next batch training will see
        self.index = 0  # batches of this epoch already consumed

    def epoch_layout(self, g: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
        """Draw from ``g`` what this epoch needs; return slot ids (n,) -> start positions (n,)."""
        raise NotImplementedError

    def epoch_batches(self, epoch: int) -> torch.Tensor:
        """This rank's batches of ``epoch``: start positions. (batches_per_epoch, batch_size)"""
        g = torch.Generator().manual_seed(self.seed + epoch)
        starts_of = self.epoch_layout(g)
        slots = torch.randperm(self.num_slots, generator=g)  # (num_slots,)
        mine = slots[self.rank :: self.world_size][: self.batches_per_epoch * self.batch_size]
        return starts_of(mine).view(self.batches_per_epoch, self.batch_size)

    def batch_at(self, consumed: int) -> torch.Tensor:
        """(batch_size,) the start positions of this rank's batch number ``consumed`` (from 0),
        counted from the run's start: the batch the run trains on after ``consumed`` others."""
        epoch, index = divmod(consumed, self.batches_per_epoch)
        return self.epoch_batches(epoch)[index]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, index = self.epoch, self.index  # resume at the consumed position, not the yielded
        while True:
            for batch in self.epoch_batches(epoch)[index:]:
                yield batch.tolist()
            epoch, index = epoch + 1, 0

    def mark_consumed(self, n: int = 1) -> None:
        """Training used ``n`` more batches: advance the position that ``state_dict`` saves."""
        self.epoch, self.index = divmod(
            self.epoch * self.batches_per_epoch + self.index + n, self.batches_per_epoch
        )

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "windows": self.windows,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue at the consumed position of ``state``; the next ``__iter__`` starts there."""
        saved_windows = state.get("windows", "random")  # a state from before data.windows
        if saved_windows != self.windows:
            if not self.allow_approximate_resume:
                raise UserError(another_windows_message(self.windows, saved_windows))
            log.warning(
                "approximate data resume: data.windows %s (the checkpoint's was %s) starts "
                "from its first window",
                self.windows,
                saved_windows,
            )
            return
        saved = (state["world_size"], state["batch_size"])
        # All ranks together consumed the first `windows` entries of the epoch's permutation,
        # whatever the striding, so another layout continues exactly where this one stopped
        # if it splits that prefix into whole batches and its epochs hold as many windows.
        windows = state["index"] * state["batch_size"] * state["world_size"]
        per_step, saved_per_step = self.batch_size * self.world_size, saved[0] * saved[1]
        same_epochs = (
            self.num_slots // saved_per_step * saved_per_step
            == self.num_slots // per_step * per_step
        )
        if saved == (self.world_size, self.batch_size) or (windows % per_step == 0 and same_epochs):
            consumed = windows // per_step
            if per_step != saved_per_step and self.rank == 0:
                log.info(
                    "resuming with %d windows a step (world_size %d x batch_size %d), not the "
                    "checkpoint's %d: the data continues exactly, at window %d of epoch %d",
                    per_step, self.world_size, self.batch_size, saved_per_step, windows,
                    state["epoch"],
                )  # fmt: skip
        elif self.allow_approximate_resume:
            consumed = windows // per_step
            log.warning(
                "approximate data resume: world_size %d, batch_size %d -> %d, %d: %d windows of "
                "epoch %d consumed, continuing at batch %d (under one batch of windows seen twice)",
                *saved,
                self.world_size,
                self.batch_size,
                windows,
                state["epoch"],
                consumed,
            )
        else:
            raise UserError(another_layout_message(*saved, self.world_size, self.batch_size))
        if state["seed"] != self.seed:
            self._check_seed(state["seed"])
        self.epoch, self.index = state["epoch"], 0
        self.mark_consumed(consumed)  # also rolls an index past the epoch's end into the next

    def _check_seed(self, saved: int) -> None:
        """Another ``data.seed`` is another window order: the saved position means nothing
        there. Refused unless approximate resume is allowed; then the new order continues
        from the same position (windows the run saw may come again, others not at all)."""
        if not self.allow_approximate_resume:
            raise UserError(another_seed_message(self.seed, saved))
        log.warning(
            "approximate data resume: data.seed %d (the checkpoint's was %d) orders the "
            "windows anew from the saved position",
            self.seed,
            saved,
        )


class DocumentSampler(StartSampler):
    """``data.windows: document_start``: batches drawn from an explicit array of window starts
    (``documents.document_window_starts``: each document's start, then every block_size
    tokens of a long one), permuted each epoch as ``StartSampler`` does.

    Args:
        starts: (N,) the window starts, in stream order.
        window: Tokens per sample (``block_size + 1``), for the messages.
        batch_size, seed, rank, world_size, allow_approximate_resume: as ``WindowSampler``.
    """

    windows = "document_start"

    def __init__(
        self,
        starts: np.ndarray,
        window: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        allow_approximate_resume: bool = False,
    ):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"bad sampler geometry: batch_size {batch_size}, rank {rank} of world_size "
                f"{world_size}"
            )
        self.starts = torch.from_numpy(np.ascontiguousarray(starts, dtype=np.int64))  # (N,)
        what = f"the train split has {len(starts)} document-start windows of {window} tokens"
        super().__init__(
            len(starts), batch_size, seed, rank, world_size, allow_approximate_resume, what
        )

    def epoch_layout(self, g: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda slots: self.starts[slots]


def another_layout_message(
    saved_world_size: int, saved_batch_size: int, world_size: int, batch_size: int
) -> str:
    return (
        f"the checkpoint's data position is for world_size {saved_world_size} and batch_size "
        f"{saved_batch_size}, this run has world_size {world_size} and batch_size "
        f"{batch_size}, which cannot continue at the same window: keep "
        "world_size x batch_size, or set data.allow_approximate_resume: true"
    )


def another_seed_message(seed: int, saved: int) -> str:
    return (
        f"data.seed: {seed} in the config, {saved} in the checkpoint: another window order, "
        f"where the saved data position means nothing; keep data.seed {saved}, or set "
        "data.allow_approximate_resume: true"
    )


def another_windows_message(windows: str, saved: str) -> str:
    return (
        f"data.windows: {windows} in the config, {saved} in the checkpoint: other windows, "
        f"where the saved data position means nothing; keep data.windows {saved}, or set "
        "data.allow_approximate_resume: true"
    )
