"""What the labelled-record data modules share (``ClassificationDataModule``,
``PreferenceDataModule``): a ``.jsonl`` line read as one JSON object, the seeded resumable
order of the records, and the loaders and checkpoint state built on it.

Their sets are small ``.jsonl`` files read whole as fit starts (no ``prepare``): training
draws batches of record indices from ``RecordSampler``, validation scores every record once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from lit_gpt_scratch.data.samplers import StartSampler
from lit_gpt_scratch.data.sources import UTF8_BOM
from lit_gpt_scratch.errors import UserError


def json_object(line: bytes, offset: int, where: str) -> dict | None:
    """The JSON object on one ``.jsonl`` line (``where`` names it in errors); None for a blank
    line. A leading byte-order mark, as Windows tools write them, is skipped."""
    if offset == 0 and line.startswith(UTF8_BOM):
        line = line[len(UTF8_BOM) :]
    if not line.strip():
        return None
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{where} is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{where} is not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise UserError(f"{where} is not a JSON object")
    return record


class RecordSampler(StartSampler):
    """Seeded, resumable batches of record indices: each epoch a permutation of the records
    (``StartSampler``: rank striding, the consumed position in checkpoints)."""

    windows = "records"

    def epoch_layout(self, g: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda slots: slots  # slot k is record k


class RecordFilesDataModule(L.LightningDataModule):
    """Training batches from ``self.train_set`` in ``RecordSampler``'s order, validation over
    ``self.val_set`` once; a subclass reads both in ``setup``. Its hyper-parameters name
    ``train_file``, ``batch_size``, ``seed``, ``num_workers`` and
    ``allow_approximate_resume``; ``noun`` names its records in messages."""

    noun = "records"

    def __init__(self):
        super().__init__()
        self.train_set = None
        self.val_set = None
        self.sampler: RecordSampler | None = None
        self._pending_state: dict | None = None
        self.vocab_size: int | None = None  # the tokenizer's, for the model's check

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DataLoader:
        """Infinite batches (the Trainer's length is ``max_steps``)."""
        h = self.hparams
        rank, world = self._rank_and_world()
        what = f"data.train_file {h.train_file} has {len(self.train_set)} {self.noun}"
        sampler = RecordSampler(
            len(self.train_set), h.batch_size, h.seed, rank, world,
            h.allow_approximate_resume, what,
        )  # fmt: skip
        state = self.sampler.state_dict() if self.sampler is not None else self._pending_state
        if state:
            sampler.load_state_dict(state)
        self.sampler, self._pending_state = sampler, None
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=h.num_workers)

    def val_dataloader(self) -> DataLoader:
        """Every val record once over all ranks: rank ``r`` scores records ``r, r + world, ...``."""
        rank, world = self._rank_and_world()
        mine = torch.utils.data.Subset(self.val_set, range(rank, len(self.val_set), world))
        return DataLoader(mine, batch_size=self.hparams.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def mark_batch_consumed(self) -> None:
        """Count one training batch as trained on (what checkpoints save, not the prefetched)."""
        if self.sampler is None:
            raise RuntimeError("mark_batch_consumed() before train_dataloader()")
        self.sampler.mark_consumed()

    def state_dict(self) -> dict:
        if self.sampler is not None:
            return {"train_file": str(Path(self.hparams.train_file)), **self.sampler.state_dict()}
        return dict(self._pending_state or {})

    def load_state_dict(self, state_dict: dict) -> None:
        if self.sampler is not None and state_dict:
            self.sampler.load_state_dict(state_dict)
        else:
            self._pending_state = state_dict or None
