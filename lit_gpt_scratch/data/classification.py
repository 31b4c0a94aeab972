"""Labelled texts for a classifier: ``.jsonl`` records ``{"text": ..., "label": ...}``.

A label is an int in ``[0, n_classes)`` or one of ``data.class_names`` (its index). Each text
is tokenized in process when the data module is set up (no shards: a classification set is
small), cut to its first ``block_size`` tokens and right-padded to ``block_size`` with the
end-of-text id. A batch is ``(ids (B, T), lengths (B,), labels (B,))``: the classifier reads the
state at position ``length - 1``, which causal attention never lets the padding reach.

Training batches come from ``record_files.RecordSampler``: a seeded permutation of the
records each epoch, dealt to the ranks, whose consumed position goes into checkpoints (exact
resume), as the pretraining samplers do. Validation scores every val record once, in file order.

Bad input is one line naming the file and the byte offset of the record, as the pretraining
``.jsonl`` reader does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from lit_gpt_scratch.data.record_files import RecordFilesDataModule, json_object
from lit_gpt_scratch.errors import UserError, check_at_least
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer


class LabelledTexts(Dataset):
    """Token ids padded to one length, with each text's length and label.

    Args:
        ids: (N, T) token ids, each row right-padded.
        lengths: (N,) tokens of each text before the padding (at least 1).
        labels: (N,) class indices.
    """

    def __init__(self, ids: np.ndarray, lengths: np.ndarray, labels: np.ndarray):
        self.ids = torch.from_numpy(ids)
        self.lengths, self.labels = torch.from_numpy(lengths), torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.ids[i], self.lengths[i], self.labels[i]


def label_of(value, class_names: list[str] | None, n_classes: int, where: str) -> int:
    """A record's label as a class index; UserError naming the record when it is not one."""
    if isinstance(value, str):
        if class_names is None:
            raise UserError(f"{where}: label {value!r} is a name, but data.class_names is not set")
        if value not in class_names:
            raise UserError(
                f"{where}: label {value!r} is not one of data.class_names {class_names}"
            )
        return class_names.index(value)
    if isinstance(value, bool) or not isinstance(value, int):  # True is an int to Python
        raise UserError(f"{where}: label {value!r} is neither an int nor a class name")
    if not 0 <= value < n_classes:
        raise UserError(f"{where}: label {value} is not in [0, model.n_classes {n_classes})")
    return value


def read_labelled(
    path: str,
    encode: Callable[[str], np.ndarray],
    pad_id: int,
    block_size: int,
    n_classes: int,
    class_names: list[str] | None,
) -> tuple[LabelledTexts, int]:
    """The records of the ``.jsonl`` file at ``path``, and how many were cut to block_size."""
    ids, lengths, labels, cut = [], [], [], 0
    try:
        with open(path, "rb") as f:
            offset = 0
            for line in f:
                where = f"{path}: record at byte {offset}"
                record = _record(line, offset, where)
                offset += len(line)
                if record is None:
                    continue
                tokens = encode(record["text"])
                if len(tokens) == 0:
                    raise UserError(f"{where}: text is empty")
                cut += len(tokens) > block_size
                tokens = tokens[:block_size]
                row = np.full(block_size, pad_id, dtype=np.int64)  # (T,)
                row[: len(tokens)] = tokens
                ids.append(row)
                lengths.append(len(tokens))
                labels.append(label_of(record["label"], class_names, n_classes, where))
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    if not labels:
        raise UserError(f"{path} holds no records")
    arrays = np.stack(ids), np.array(lengths, np.int64), np.array(labels, np.int64)
    return LabelledTexts(*arrays), cut


def _record(line: bytes, offset: int, where: str) -> dict | None:
    """One line's record, checked: None for a blank line."""
    record = json_object(line, offset, where)
    if record is None:
        return None
    if not isinstance(record.get("text"), str):
        raise UserError(f'{where} has no "text" string')
    if "label" not in record:
        raise UserError(f'{where} has no "label"')
    return record


class ClassificationDataModule(RecordFilesDataModule):
    """Labelled ``.jsonl`` texts for ``model.head: classification``.

    Args:
        train_file: ``.jsonl`` of ``{"text": ..., "label": ...}`` records to train on.
        val_file: The same, held out: ``val/loss`` and ``val/accuracy`` score all of it.
        tokenizer: As ``data.tokenizer`` of pretraining: the base model's vocabulary.
        block_size: Tokens per text: longer ones are cut to their first ``block_size`` tokens
            (counted and reported), shorter ones padded. Also the model's context (linked).
        batch_size: Texts per batch on each device.
        n_classes: Classes; set from ``model.n_classes`` (linked).
        class_names: Names for the classes, in index order: a record's label may then be a
            name. None: labels are ints.
        seed: Seeds the order of the training records (epoch ``e`` uses ``seed + e``).
        num_workers: DataLoader worker processes.
        allow_approximate_resume: Resume with another ``seed`` or another ``world_size x
            batch_size`` from about the same position, with a warning, instead of refusing.
    """

    def __init__(
        self,
        train_file: str,
        val_file: str,
        tokenizer: str = "gpt2",
        block_size: int = 1024,
        batch_size: int = 8,
        n_classes: int = 2,
        class_names: list[str] | None = None,
        seed: int = 1337,
        num_workers: int = 0,
        allow_approximate_resume: bool = False,
    ):
        super().__init__()
        check_at_least("data.block_size", block_size, 1)
        check_at_least("data.batch_size", batch_size, 1)
        check_at_least("data.num_workers", num_workers, 0)
        if class_names is not None and len(class_names) != n_classes:
            raise UserError(
                f"data.class_names lists {len(class_names)} names, model.n_classes is {n_classes}"
            )
        if class_names is not None and len(set(class_names)) != len(class_names):
            raise UserError(f"data.class_names {class_names} names a class twice")
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        h = self.hparams
        tokenizer = load_tokenizer(h.tokenizer)
        self.vocab_size = tokenizer.vocab_size
        sets = {}
        for key in ("train_file", "val_file"):
            sets[key], cut = read_labelled(
                getattr(h, key), tokenizer.encode_ordinary, tokenizer.eot_id, h.block_size,
                h.n_classes, h.class_names,
            )  # fmt: skip
            rank_zero_info(
                f"data.{key} {getattr(h, key)}: {len(sets[key])} texts"
                + (f", {cut} cut to block_size {h.block_size}" if cut else "")
            )
        self.train_set, self.val_set = sets["train_file"], sets["val_file"]
