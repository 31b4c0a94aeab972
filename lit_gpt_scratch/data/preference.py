"""Preference pairs for DPO: ``.jsonl`` records ``{"prompt": ..., "chosen": ..., "rejected": ...}``.

Each record is rendered with the chat template twice, as a one-turn conversation: the prompt
as the user's message, then ``<|assistant|>`` and the chosen (or the rejected) reply closed by
``<|end|>``. Only the reply and its ``<|end|>`` are targets: the sequence log-probability DPO
compares is summed over them, the prompt masked. Each rendering is right-padded with the
end-of-text id to ``block_size + 1`` tokens; a pair that does not fit is cut at the end of its
reply (counted and reported), and one whose prompt leaves no room for a reply token is
skipped (counted; all skipped is an error). Records are tokenized in process when the data
module is set up: a preference set is small.

A batch is ``(B, 2, 2, block_size + 1)`` int64: for each pair, the chosen then the rejected
rendering, each as its ids and its target mask (1 where the token is a target), the layout
of a packed chat window (``train.module.inputs_and_targets``).

Training order: ``record_files.RecordSampler`` (a seeded permutation each epoch, dealt to
the ranks, its consumed position saved in checkpoints: exact resume). Validation scores every
val pair once. Bad input is one line naming the file and the byte offset of the record.
"""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from lit_gpt_scratch.data.chat_template import ChatTemplate
from lit_gpt_scratch.data.record_files import RecordFilesDataModule, json_object
from lit_gpt_scratch.errors import UserError, check_at_least
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

FIELDS = ("prompt", "chosen", "rejected")


class PreferencePairs(Dataset):
    """Rendered pairs: ``rows[i]`` (2, 2, T + 1) chosen/rejected x ids/mask."""

    def __init__(self, rows: np.ndarray):
        self.rows = torch.from_numpy(rows)  # (N, 2, 2, T + 1)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.rows[i]


def render_reply(
    template: ChatTemplate, prompt: str, reply: str, length: int
) -> tuple[np.ndarray, bool] | None:
    """(2, length) ids and target mask of ``prompt`` as a user turn and ``reply`` as the
    assistant's, right-padded with the EOT id, and whether the reply was cut; None when the
    prompt leaves no room for one reply token."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    ids, mask = template.render(messages)  # (N,) each
    first_target = int(np.argmax(mask))
    if first_target >= length:
        return None
    cut = len(ids) > length
    row = np.full((2, length), template.eot_id, dtype=np.int64)
    row[1] = 0
    row[0, : min(len(ids), length)] = ids[:length]
    row[1, : min(len(ids), length)] = mask[:length]
    return row, cut


def read_pairs(
    path: str, template: ChatTemplate, block_size: int
) -> tuple[PreferencePairs, int, int]:
    """The pairs of the ``.jsonl`` file at ``path``, how many were cut and how many skipped."""
    rows, cut, skipped = [], 0, 0
    try:
        with open(path, "rb") as f:
            offset = 0
            for line in f:
                where = f"{path}: record at byte {offset}"
                record = _record(line, offset, where)
                offset += len(line)
                if record is None:
                    continue
                chosen = render_reply(template, record["prompt"], record["chosen"], block_size + 1)
                rejected = render_reply(
                    template, record["prompt"], record["rejected"], block_size + 1
                )
                if chosen is None or rejected is None:
                    skipped += 1
                    continue
                cut += chosen[1] or rejected[1]
                rows.append(np.stack([chosen[0], rejected[0]]))  # (2, 2, T + 1)
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    if not rows:
        why = f" ({skipped} skipped: the prompt fills block_size {block_size})" if skipped else ""
        raise UserError(f"{path} holds no preference pairs{why}")
    return PreferencePairs(np.stack(rows)), cut, skipped


def _record(line: bytes, offset: int, where: str) -> dict | None:
    """One line's record, checked: None for a blank line."""
    record = json_object(line, offset, where)
    if record is None:
        return None
    for key in FIELDS:
        if not isinstance(record.get(key), str):
            raise UserError(f'{where} has no "{key}" string')
    for key in ("chosen", "rejected"):
        if not record[key].strip():
            raise UserError(f'{where}: "{key}" is empty')
    if record["chosen"] == record["rejected"]:
        raise UserError(f'{where}: "chosen" and "rejected" are the same reply')
    return record


class PreferenceDataModule(RecordFilesDataModule):
    """``{prompt, chosen, rejected}`` ``.jsonl`` pairs for ``model.objective: dpo``.

    Args:
        train_file: ``.jsonl`` of ``{"prompt": ..., "chosen": ..., "rejected": ...}`` records.
        val_file: The same, held out: ``val/loss``, ``val/margin`` and ``val/accuracy`` score
            all of it.
        tokenizer: The base model's tokenizer, with the chat tokens (``stdlib-4k+chat``).
        block_size: Tokens of each rendering the model reads (linked to the model's context):
            a longer pair is cut at the end of its reply (counted and reported).
        batch_size: Pairs per batch on each device (each is two sequences).
        seed: Seeds the order of the training pairs (epoch ``e`` uses ``seed + e``).
        num_workers: DataLoader worker processes.
        allow_approximate_resume: Resume with another ``seed`` or another ``world_size x
            batch_size`` from about the same position, with a warning, instead of refusing.
    """

    def __init__(
        self,
        train_file: str,
        val_file: str,
        tokenizer: str = "gpt2+chat",
        block_size: int = 1024,
        batch_size: int = 8,
        seed: int = 1337,
        num_workers: int = 0,
        allow_approximate_resume: bool = False,
    ):
        super().__init__()
        check_at_least("data.block_size", block_size, 1)
        check_at_least("data.batch_size", batch_size, 1)
        check_at_least("data.num_workers", num_workers, 0)
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        h = self.hparams
        tokenizer = load_tokenizer(h.tokenizer)
        template = ChatTemplate(tokenizer)
        self.vocab_size = tokenizer.vocab_size
        sets = {}
        for key in ("train_file", "val_file"):
            sets[key], cut, skipped = read_pairs(getattr(h, key), template, h.block_size)
            rank_zero_info(
                f"data.{key} {getattr(h, key)}: {len(sets[key])} pairs"
                + (f", {cut} cut to block_size {h.block_size}" if cut else "")
                + (f", {skipped} skipped (the prompt fills block_size)" if skipped else "")
            )
        self.train_set, self.val_set = sets["train_file"], sets["val_file"]

    noun = "pairs"

    def predict_dataloader(self):
        return self.val_dataloader()
