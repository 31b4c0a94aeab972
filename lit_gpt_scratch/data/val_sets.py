"""Named validation sets: UTF-8 text files scored whole, with the run's own tokenizer.

    data.val_sets {name: file} ─► read_val_set (checked) ─► rolling_windows ─► ValSetBatches
    ─► (inputs, targets, bytes) batches, this rank's share, every window scored once

A set's bits per byte are its summed nats over ``ln 2 x`` the file's UTF-8 bytes, the
figure ``evaluate --text FILE`` prints: the same text read by any tokenizer, so two runs
with different tokenizers or recipes compare fairly on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch

from lit_gpt_scratch.data.mixture import NAME
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.evaluate.scoring import Encoded, rolling_windows
from lit_gpt_scratch.files import read_utf8

IGNORE = -100  # the target of a position that is not scored (cross-entropy's ignore_index)


def read_val_set(name: str, path: str) -> str:
    """The text of set ``name``, checked: a one-line error naming ``data.val_sets.<name>``."""
    key = f"data.val_sets.{name}"
    if not NAME.fullmatch(name):
        raise UserError(
            f"{key}: the name must be letters, digits, _ and - only (it is part of the "
            f"metric names val/<name>/loss and val/<name>/bpb)"
        )
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{key}: {path} does not exist or is not a file")
    try:
        text = read_utf8(file)  # as evaluate --text reads it: the file's bytes, \r\n kept
    except UnicodeDecodeError as e:
        raise UserError(f"{key}: {path} is not UTF-8 text (byte {e.start})") from None
    if not text:
        raise UserError(f"{key}: {path} holds no text")
    return text


class ValSetBatches:
    """Rank ``rank``'s batches of one set: (inputs (B, T), targets (B, T), bytes (B,)).

    Windows come from ``rolling_windows``: every token of the text is scored once, the first
    after ``<|endoftext|>``. A window is right-padded to ``block_size``; unscored and padded
    targets are ``IGNORE``. The first window carries the text's whole byte count, the others
    0, so the bytes summed over all windows of all ranks are the file's, exactly.

    Rank ``r`` of ``w`` takes windows ``r, r + w, ...``, padded with empty windows (nothing
    scored, no bytes) to the same count on every rank: no window is scored twice, and the
    ranks make the same number of forward calls (a sharded model gathers in each).

    Built in memory once; iterating draws no random numbers (no DataLoader iterator, which
    takes a seed from the global generator and would shift the training run's dropout).
    """

    def __init__(
        self,
        ids: list[int],
        n_bytes: int,
        eot_id: int,
        block_size: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        windows = rolling_windows(ids, eot_id, block_size)
        self.n_windows = len(windows)
        per_rank = math.ceil(len(windows) / world_size)
        self.inputs = torch.zeros(per_rank, block_size, dtype=torch.long)  # (N, T)
        self.targets = torch.full((per_rank, block_size), IGNORE, dtype=torch.long)  # (N, T)
        self.bytes = torch.zeros(per_rank, dtype=torch.long)  # (N,)
        for row, index in enumerate(range(rank, len(windows), world_size)):
            self._fill(row, windows[index])
            if index == 0:
                self.bytes[row] = n_bytes
        self.batch_size = batch_size

    def _fill(self, row: int, window: Encoded) -> None:
        tokens = torch.tensor(window.tokens)
        read = len(tokens) - 1  # the model reads tokens[:-1]; the last n_scored are targets
        self.inputs[row, :read] = tokens[:-1]
        self.targets[row, read - window.n_scored : read] = tokens[-window.n_scored :]

    def __len__(self) -> int:
        return math.ceil(len(self.inputs) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.inputs), self.batch_size):
            rows = slice(start, start + self.batch_size)
            yield self.inputs[rows], self.targets[rows], self.bytes[rows]
