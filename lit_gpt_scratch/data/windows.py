"""Reading prepared token shards for training: a stream view, a resumable sampler, datasets.

    meta.json + {split}_NNNNNN.bin ─► TokenStream ─► TrainWindows[start] ◄─ WindowSampler (starts)
                                                └──► ValWindows[i] (fixed, evenly spread)

- ``TokenStream``: one split's shards as one continuous stream; ``read(start, length)`` may
  cross shard boundaries. Memory maps open lazily in each process and are re-opened every
  ``reopen_every`` reads, so a long run does not keep every page it ever touched mapped.
- ``WindowSampler``: an infinite, seeded sampler of window starts (a ``batch_sampler``): each
  epoch is a random permutation of non-overlapping window slots, at a random per-epoch offset,
  split across ranks. It counts batches *consumed* by training (``mark_consumed``), not batches
  handed to the DataLoader, so its ``state_dict`` resumes exactly after a checkpoint.
- ``TrainWindows`` / ``ValWindows``: map-style datasets of ``(window,)`` int64 tensors.

Nothing here imports Lightning: the DataModule wires these to the Trainer.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lit_gpt_scratch.data.shards import META, refuse_file_as_data_dir
from lit_gpt_scratch.errors import UserError

log = logging.getLogger(__name__)

# Reads between re-opening the memory maps. Each random read leaves its pages mapped: 64 KiB
# (fault-around) on most kernels, a whole 2 MiB folio where the page cache uses large folios.
# Measured on such a kernel, 512 MiB shard, random 1025-token reads: every 64 reads bounds the
# mapped set to ~120 MiB at 6.6 us/read; every 1024 reads maps the whole file (4.8 us/read).
REOPEN_EVERY = 64


def read_meta(data_dir: str | Path) -> dict:
    """The ``meta.json`` that ``prepare`` writes last: present only for a complete directory."""
    path = Path(data_dir) / META
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: run prepare on {data_dir} first") from None
    except NotADirectoryError:
        refuse_file_as_data_dir(Path(data_dir))
        raise
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); delete {data_dir} and prepare again") from None


class TokenStream:
    """One split's shards read as one virtual, continuous stream of token ids.

    Args:
        data_dir: A directory written by ``prepare``.
        split: ``train`` or ``val``.
        dtype: The token dtype the shards hold (``meta["dtype"]``).
        shards: The split's ``[{"file", "tokens"}, ...]`` list; read from meta.json when None.
        reopen_every: Re-open the memory maps after this many reads. A map read for hours keeps
            every page it touched mapped into this process (its RSS grows toward the dataset's
            size); dropping the map unmaps them. Re-opening costs microseconds.
        vocab_size: Every id read must be below it (a damaged file is named, not fed to the
            embedding, where it would crash or, on a GPU, assert). None: not checked.

    Only paths and sizes are pickled: a DataLoader worker opens its own maps on its first read.
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        dtype: str | np.dtype,
        shards: list[dict] | None = None,
        reopen_every: int = REOPEN_EVERY,
        vocab_size: int | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.vocab_size = vocab_size
        self.split = split
        self.dtype = np.dtype(dtype).newbyteorder("<")  # shards are little-endian on any host
        if shards is None:
            meta = read_meta(data_dir)
            if np.dtype(meta["dtype"]) != np.dtype(dtype):
                raise UserError(
                    f"{self.data_dir / META} says dtype {meta['dtype']}, "
                    f"the reader asked for {np.dtype(dtype).name}"
                )
            shards = meta["splits"][split]
        self.paths = [self.data_dir / s["file"] for s in shards]
        self.sizes = [int(s["tokens"]) for s in shards]
        self._check_files()
        self.starts = np.cumsum([0] + self.sizes)  # (n_shards + 1,): shard i is [s[i], s[i+1])
        self.reopen_every = reopen_every
        self._forget_maps()

    def _check_files(self) -> None:
        for path, tokens in zip(self.paths, self.sizes, strict=True):
            if not path.is_file():
                raise UserError(f"{path} is missing: delete {self.data_dir} and prepare again")
            want, have = tokens * self.dtype.itemsize, path.stat().st_size
            if have != want:
                raise UserError(
                    f"{path} has {have} bytes, meta.json says {tokens} tokens of "
                    f"{self.dtype.name} ({want} bytes): delete {self.data_dir} and prepare again"
                )

    def _forget_maps(self) -> None:
        self._maps: dict[int, np.memmap] = {}  # shard index -> map, opened on first use
        self._reads = 0
        self._pid = os.getpid()  # a forked worker must not reuse its parent's maps

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` as int64, copied out of the maps. (length,)"""
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(
                f"{self.split} tokens [{start}, {start + length}) are outside [0, {len(self)})"
            )
        if self._reads >= self.reopen_every or self._pid != os.getpid():
            self._forget_maps()
        self._reads += 1
        out = np.empty(length, dtype=np.int64)
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        done = 0
        while done < length:
            pos = start + done - int(self.starts[shard])  # offset inside this shard
            n = min(length - done, self.sizes[shard] - pos)
            out[done : done + n] = self._map(shard)[pos : pos + n]  # copies: no view escapes
            done += n
            shard += 1
        if self.vocab_size is not None and length and out.max() >= self.vocab_size:
            at = int(out.argmax())
            raise UserError(
                f"{self.split} token {start + at} of {self.data_dir} is id {int(out[at])}, "
                f"outside the {self.vocab_size}-id vocabulary of its meta.json: the token files "
                f"are damaged; delete {self.data_dir} and prepare again"
            )
        return out

    def _map(self, shard: int) -> np.memmap:
        if shard not in self._maps:
            self._maps[shard] = np.memmap(self.paths[shard], dtype=self.dtype, mode="r")
        return self._maps[shard]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_maps", "_reads", "_pid"):
            del state[key]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._forget_maps()


class WindowSampler(Sampler[list[int]]):
    """Infinite, seeded, resumable batches of window start positions (use as ``batch_sampler``).

    Epoch ``e`` draws, from ``torch.Generator().manual_seed(seed + e)``, an offset in
    ``[0, max_offset]`` and a permutation of the ``num_slots`` non-overlapping slots
    ``offset + k * window``; ``max_offset = min(window - 1, num_tokens - window)``, and
    ``num_slots`` counts the slots that fit at *any* offset, so every epoch has the same number of
    batches. Rank ``r`` takes permutation entries ``r, r + world_size, ...``; each rank gets
    ``num_slots // world_size // batch_size`` batches per epoch (the rest is dropped), so ranks
    stay in step and none waits for a batch that never comes.

    Resume: the DataLoader (and Lightning's fetcher) draw batches ahead of training, so what the
    sampler has *yielded* is not what the model has *seen*. The trainer calls
    ``mark_consumed()`` once per training batch; ``state_dict()`` reports that consumed
    position and ``__iter__`` (after ``load_state_dict``) starts at the first unconsumed batch.

    Args:
        num_tokens: Length of the train stream.
        window: Tokens per sample (``block_size + 1``).
        batch_size: Windows per batch (per rank).
        seed: Base seed of the epoch permutations.
        rank, world_size: This process's share of each epoch.
        allow_approximate_resume: Accept a state saved with another ``world_size`` or
            ``batch_size`` that cannot continue at the very next window, continuing at the same
            share of the epoch (to within one batch). Without it such a state is refused; a
            layout that can continue exactly (for example 2 ranks x 4 saved, 1 rank x 8 or
            4 ranks x 2 resuming) needs nothing.
    """

    def __init__(
        self,
        num_tokens: int,
        window: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        allow_approximate_resume: bool = False,
    ):
        if window < 1 or batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"bad sampler geometry: window {window}, batch_size {batch_size}, "
                f"rank {rank} of world_size {world_size}"
            )
        if num_tokens < window:
            raise UserError(f"the train split has {num_tokens} tokens, fewer than one window")
        self.num_tokens, self.window, self.seed = num_tokens, window, seed
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.allow_approximate_resume = allow_approximate_resume
        self.max_offset = min(window - 1, num_tokens - window)
        self.num_slots = (num_tokens - self.max_offset) // window
        self.batches_per_epoch = self.num_slots // world_size // batch_size
        if self.batches_per_epoch == 0:
            raise UserError(
                f"the train split has {num_tokens} tokens: {self.num_slots} windows of {window}, "
                f"fewer than one batch of batch_size {batch_size} x world_size {world_size}"
            )
        self.epoch = 0  # consumed position: the next batch training will see
        self.index = 0  # batches of this epoch already consumed

    def epoch_batches(self, epoch: int) -> torch.Tensor:
        """This rank's batches of ``epoch``: start positions. (batches_per_epoch, batch_size)"""
        g = torch.Generator().manual_seed(self.seed + epoch)
        offset = int(torch.randint(self.max_offset + 1, (1,), generator=g))
        slots = torch.randperm(self.num_slots, generator=g)  # (num_slots,)
        mine = slots[self.rank :: self.world_size][: self.batches_per_epoch * self.batch_size]
        return (offset + mine * self.window).view(self.batches_per_epoch, self.batch_size)

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
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue at the consumed position of ``state``; the next ``__iter__`` starts there."""
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


class TrainWindows(Dataset):
    """``dataset[start]``: the window of tokens at ``start``, as given by ``WindowSampler``."""

    def __init__(self, stream: TokenStream, window: int):
        self.stream, self.window = stream, window

    def __len__(self) -> int:
        return len(self.stream) - self.window + 1  # valid start positions

    def __getitem__(self, start: int) -> torch.Tensor:
        return torch.from_numpy(self.stream.read(int(start), self.window))  # (window,) int64


class ValWindows(Dataset):
    """Fixed, non-overlapping windows of the val split, the same on every call and run.

    Slot ``k`` is tokens ``[k * window, (k + 1) * window)``. With more than ``max_windows``
    slots, ``max_windows`` of them are taken evenly spread through the split (slot
    ``i * n_slots // max_windows``), so val loss covers the whole split at a bounded cost.
    With ``world_size > 1`` each rank takes every ``world_size``-th chosen window, all ranks
    the same count (up to ``world_size - 1`` windows dropped), so evaluation stays in step.
    """

    def __init__(
        self,
        stream: TokenStream,
        window: int,
        max_windows: int = 200,
        rank: int = 0,
        world_size: int = 1,
    ):
        if max_windows < 1:
            raise UserError(f"data.val_windows must be at least 1, got {max_windows}")
        self.stream, self.window = stream, window
        n_slots = len(stream) // window
        if n_slots <= max_windows:
            chosen = list(range(n_slots))
        else:
            chosen = [i * n_slots // max_windows for i in range(max_windows)]
        per_rank = len(chosen) // world_size
        self.slots = chosen[rank::world_size][:per_rank]

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, i: int) -> torch.Tensor:
        start = self.slots[i] * self.window
        return torch.from_numpy(self.stream.read(start, self.window))  # (window,) int64
