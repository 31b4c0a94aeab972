"""Reading packed chat windows (``chat_prepare``): ids and mask side by side, (2, window) each.

Every window of a chat data directory is ``window`` tokens long and starts at a multiple of
it, so a window is a slot index: ``PackedSampler`` permutes the slots with
``samplers.StartSampler``'s seeded epochs, rank striding and exact resume; ``PackedWindows``
reads one; ``PackedValWindows`` is ``ValWindows`` (the same evenly spread, fixed windows) with
the mask read beside the ids. Nothing here imports Lightning.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from lit_gpt_scratch.data.chat_prepare import MASK, check_chat_files
from lit_gpt_scratch.data.samplers import StartSampler
from lit_gpt_scratch.data.windows import TokenStream, ValWindows
from lit_gpt_scratch.errors import UserError


class ChatStreams:
    """One chat data directory's ids and masks, per split, checked against meta.json."""

    def __init__(self, data_dir, meta: dict):
        if meta.get("format") != "chat":
            raise UserError(
                f"data_dir {data_dir} holds text shards, not chat windows: set data.format: "
                "text, or use another data.data_dir"
            )
        check_chat_files(data_dir, meta)
        self.window = meta["window"]
        dtype, vocab = meta["dtype"], meta["vocab_size"]
        self.ids = {
            s: TokenStream(data_dir, s, dtype, meta["splits"][s], vocab_size=vocab)
            for s in ("train", "val")
        }
        self.masks = {
            s: TokenStream(data_dir, s + MASK, np.uint8, meta["masks"][s], vocab_size=2)
            for s in ("train", "val")
        }

    def windows(self, split: str) -> int:
        return len(self.ids[split]) // self.window


class PackedWindows(Dataset):
    """``dataset[start]``: the packed window at token ``start`` as (2, window) int64: its ids,
    then its mask (1 where the token is a target)."""

    def __init__(self, ids: TokenStream, mask: TokenStream, window: int):
        self.ids, self.mask, self.window = ids, mask, window

    def __len__(self) -> int:
        return len(self.ids) // self.window

    def __getitem__(self, start: int) -> torch.Tensor:
        start = int(start)
        pair = np.stack([self.ids.read(start, self.window), self.mask.read(start, self.window)])
        return torch.from_numpy(pair)  # (2, window)


class PackedValWindows(ValWindows):
    """The val split's fixed windows (``ValWindows``'s choice), each as (2, window)."""

    def __init__(self, ids, mask, window, max_windows=200, rank=0, world_size=1):
        super().__init__(ids, window, max_windows, rank, world_size)
        self.packed = PackedWindows(ids, mask, window)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.packed[self.slots[i] * self.window]


class PackedSampler(StartSampler):
    """Batches of packed window starts (``k * window`` for slot ``k``), every window once an
    epoch in a seeded order; resume, ranks and batches as ``StartSampler``."""

    windows = "packed"

    def __init__(self, num_windows, window, batch_size, seed, rank, world, allow_approximate):
        self.window = window
        what = f"the train split holds {num_windows} packed windows"
        super().__init__(num_windows, batch_size, seed, rank, world, allow_approximate, what)

    def epoch_layout(self, g: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda slots: slots * self.window
