"""Reading prepared token shards for training: a stream view, a resumable sampler, datasets.

    meta.json + {split}_NNNNNN.bin ─► TokenStream ─► TrainWindows[start] ◄─ WindowSampler (starts)
                                                └──► ValWindows[i] (fixed, evenly spread)

- ``TokenStream``: one split's shards as one continuous stream; ``read(start, length)`` may
  cross shard boundaries. Memory maps open lazily in each process and are re-opened every
  ``reopen_every`` reads, so a long run does not keep every page it ever touched mapped.
- ``WindowSampler``: an infinite, seeded sampler of window starts (a ``batch_sampler``): each
  epoch is a random permutation of non-overlapping window slots, at a random per-epoch offset,
  split across ranks. Its permutation, striding and resume are ``samplers.StartSampler``'s: it
  counts batches *consumed* by training (``mark_consumed``), not batches handed to the
  DataLoader, so its ``state_dict`` resumes exactly after a checkpoint.
- ``TrainWindows`` / ``ValWindows``: map-style datasets of ``(window,)`` int64 tensors.

Nothing here imports Lightning: the DataModule wires these to the Trainer.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lit_gpt_scratch.data.samplers import StartSampler
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


class WindowSampler(StartSampler):
    """``data.windows: random``: windows at any position, non-overlapping within an epoch.

    Epoch ``e`` draws, from ``torch.Generator().manual_seed(seed + e)``, an offset in
    ``[0, max_offset]`` and a permutation of the ``num_slots`` non-overlapping slots
    ``offset + k * window``; ``max_offset = min(window - 1, num_tokens - window)``, and
    ``num_slots`` counts the slots that fit at *any* offset, so every epoch has the same number of
    batches. The permutation, the ranks' shares and resume are ``StartSampler``'s.

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

    windows = "random"

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
        self.num_tokens, self.window = num_tokens, window
        self.max_offset = min(window - 1, num_tokens - window)
        num_slots = (num_tokens - self.max_offset) // window
        what = f"the train split has {num_tokens} tokens: {num_slots} windows of {window}"
        super().__init__(
            num_slots, batch_size, seed, rank, world_size, allow_approximate_resume, what
        )

    def epoch_layout(self, g: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
        offset = int(torch.randint(self.max_offset + 1, (1,), generator=g))  # before the slots
        return lambda slots: offset + slots * self.window


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
