"""Document boundaries beside the token shards: the offset of every EOT.

    data_dir/  train_000000.bin        the shard's tokens (``shards.py``)
               train_000000.docs.npy   (E,) uint64: offsets, inside that shard, of its EOT tokens

``prepare`` ends every document with one EOT, and the tokenizer never produces that id from
text (``encode_ordinary``), so the EOTs are exactly the document ends: a split's documents start
at its first token and just after each EOT. A boundary file is a NumPy ``.npy`` (little-endian
``uint64``, 1-D), written atomically *before* its shard gets its final name, so a shard with a
final name always has its boundary file. meta.json lists them under ``boundaries`` (a key of its
own: the corpus fingerprint of ``datamodule.py`` does not read it, so adding the files changes no
checkpoint's resume). A directory prepared before boundary files existed has no such key; it
trains with ``data.windows: random`` as before and refuses ``document_start``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from lit_gpt_scratch.data.shards import ShardWriter
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.files import atomic_write

BOUNDARY_DTYPE = np.dtype("<u8")
BOUNDARIES = "boundaries"  # meta.json's key: {split: [{"file", "eots"}, ...]}
# the final name, and the temporary ``files.atomic_write`` writes it through
DOCS_RE = re.compile(r"^(train|val)_(\d{6})\.docs\.npy$")
DOCS_TMP_RE = re.compile(r"^\.(train|val)_(\d{6})\.docs\.npy\.\d+\.tmp$")
SCAN_BLOCK = 1 << 24  # tokens compared at a time when a shard is scanned for its EOTs


def docs_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.docs.npy"


def is_boundary_file(name: str) -> bool:
    """A boundary file, or the temporary a kill left of one."""
    return bool(DOCS_RE.match(name) or DOCS_TMP_RE.match(name))


def eot_offsets(tokens: np.ndarray, eot_id: int) -> np.ndarray:
    """(E,) int64 offsets of ``eot_id`` in ``tokens`` (N,), scanned a block at a time."""
    parts = [
        np.flatnonzero(tokens[i : i + SCAN_BLOCK] == eot_id) + i
        for i in range(0, len(tokens), SCAN_BLOCK)
    ]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def scan_shard(path: Path, dtype: np.dtype, eot_id: int, length: int | None = None) -> np.ndarray:
    """(E,) the EOT offsets among the first ``length`` tokens of a shard file (all: None)."""
    if length == 0 or os.path.getsize(path) == 0:
        return np.empty(0, np.int64)
    return eot_offsets(np.memmap(path, dtype=dtype, mode="r")[:length], eot_id)


def write_boundaries(path: Path, offsets: np.ndarray) -> None:
    with atomic_write(path) as file:
        np.save(file, offsets.astype(BOUNDARY_DTYPE), allow_pickle=False)


def read_boundaries(path: Path) -> np.ndarray:
    """(E,) the offsets a boundary file holds, memory-mapped (its header read, no data)."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


class DocumentShardWriter(ShardWriter):
    """A ``ShardWriter`` that also writes each shard's boundary file as the shard completes.

    The EOT offsets of the incomplete shard are kept in memory (8 bytes a document). Resuming
    (``resume_at``) finds them again by scanning that shard's synced part, and writes the
    boundary file of any whole shard that lacks one (a kill between the two files, or a run
    interrupted before boundary files existed): both are the same bytes an uninterrupted run
    writes.
    """

    def __init__(self, data_dir: Path, split: str, shard_tokens: int, dtype, eot_id: int):
        super().__init__(data_dir, split, shard_tokens, dtype)
        self.eot_id = eot_id
        self._ends: list[np.ndarray] = []  # EOT positions in the split, past the last file

    def docs_path(self, index: int) -> Path:
        return self.data_dir / docs_name(self.split, index)

    def write(self, tokens: np.ndarray) -> None:
        self._ends.append(np.flatnonzero(tokens == self.eot_id) + self.total)  # (E,) int64
        super().write(tokens)

    def _complete(self) -> None:
        index = (self.total - 1) // self.shard_tokens
        first = index * self.shard_tokens
        ends = np.concatenate(self._ends) if self._ends else np.empty(0, np.int64)  # sorted
        mine = int(np.searchsorted(ends, first + self.shard_tokens))
        self._ends = [ends[mine:]]
        write_boundaries(self.docs_path(index), ends[:mine] - first)  # before the shard's rename
        super()._complete()

    def resume_at(self, total: int) -> None:
        super().resume_at(total)
        current, offset = divmod(total, self.shard_tokens)
        for name in os.listdir(self.data_dir):
            final, tmp = DOCS_RE.match(name), DOCS_TMP_RE.match(name)
            match = final or tmp
            if match and match.group(1) == self.split and (tmp or int(match.group(2)) >= current):
                os.remove(self.data_dir / name)  # written past the checkpoint, or half-written
        for index in range(current):
            if not self.docs_path(index).exists():
                ends = scan_shard(self.path(index), self.dtype, self.eot_id)
                write_boundaries(self.docs_path(index), ends)
        start = current * self.shard_tokens
        self._ends = [scan_shard(self._tmp(current), self.dtype, self.eot_id, offset) + start]

    def boundary_files(self) -> list[dict]:
        """meta.json's listing of this split's boundary files, one per shard (after ``finish``)."""
        shards = -(-self.total // self.shard_tokens)
        return [
            {"file": self.docs_path(i).name, "eots": len(read_boundaries(self.docs_path(i)))}
            for i in range(shards)
        ]


def check_boundaries(out: Path, meta: dict) -> None:
    """Every boundary file meta.json lists is there and holds as many offsets as it says."""
    for files in meta.get(BOUNDARIES, {}).values():
        for entry in files:
            path = out / entry["file"]
            try:
                count = len(read_boundaries(path))
            except (OSError, ValueError):
                count = None
            if count != entry["eots"]:
                raise UserError(
                    f"{path} is missing or does not hold the {entry['eots']} document "
                    f"boundaries meta.json lists: delete {out} and prepare again"
                )


def document_ends(data_dir: str | Path, meta: dict, split: str) -> np.ndarray | None:
    """(E,) int64 position in the split's stream of every EOT; None for a directory prepared
    before boundary files existed."""
    listing = meta.get(BOUNDARIES)
    if listing is None:
        return None
    check_boundaries(Path(data_dir), {BOUNDARIES: {split: listing[split]}})
    starts = np.cumsum([0] + [int(s["tokens"]) for s in meta["splits"][split]])  # of each shard
    parts = [
        read_boundaries(Path(data_dir) / entry["file"]).astype(np.int64) + int(start)
        for entry, start in zip(listing[split], starts, strict=False)
    ]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def document_window_starts(ends: np.ndarray, num_tokens: int, window: int) -> np.ndarray:
    """(N,) int64 start of every training window that ``data.windows: document_start`` draws.

    Document ``d`` spans ``[s, e)``: from the stream's start or just after an EOT, to just
    after its own EOT. It gives windows at ``s, s + T, s + 2T, ...`` (``T = window - 1``, the
    block size) while some of its targets are left: ``k T < e - s - 1``. Consecutive windows of
    a long document share one token (the last target of one is the first input of the next),
    so each of its next-token pairs is trained on once. Windows that would run past the stream's
    end are left out (a document near the end of the split gets only the ones that fit).
    """
    bounds = ends + 1  # (E,) one past each EOT
    if len(bounds) == 0 or bounds[-1] != num_tokens:  # a stream not ending with an EOT
        bounds = np.append(bounds, num_tokens)
    starts = np.concatenate([[0], bounds[:-1]]).astype(np.int64)  # (D,)
    block = window - 1
    per_doc = np.maximum(bounds - starts - 1 + block - 1, 0) // block  # (D,) ceil((L-1)/T)
    total = int(per_doc.sum())
    first = np.cumsum(per_doc) - per_doc  # (D,) index of each document's first window
    k = np.arange(total) - np.repeat(first, per_doc)  # (N,) 0, 1, ... within each document
    windows = np.repeat(starts, per_doc) + k * block
    return windows[windows + window <= num_tokens]
