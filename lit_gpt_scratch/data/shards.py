"""Token shards on disk: raw little-endian ids, no header, ``np.memmap(path, dtype)`` reads them.

A split (``train``/``val``) is one continuous token stream cut into shards of exactly
``shard_tokens`` tokens (the last one shorter): ``train_000000.bin, train_000001.bin, ...``.
A shard is written under ``<name>.tmp`` and renamed only when complete, so a file with a final
name is always whole. ``ShardWriter`` can also reopen a stream at a known length, which is how
an interrupted ``prepare`` resumes.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy as np

from lit_gpt_scratch.errors import UserError

META = "meta.json"  # written last by prepare: its presence marks a complete directory
SPLITS = ("train", "val")
TMP_SUFFIX = ".tmp"
SHARD_RE = re.compile(r"^(train|val)_(\d{6})\.bin(\.tmp)?$")


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


@contextlib.contextmanager
def naming(path):
    """Give an OSError the file it happened to: a write or flush of an open file (a full disk)
    raises one without a name."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None


def refuse_file_as_data_dir(out: Path) -> None:
    """One line when ``out``, or the nearest of its parents that exists, is not a folder (the
    user's own file: never suggest deleting it)."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                what = "is" if path == out else f"is inside {path}, which is"
                raise UserError(
                    f"data_dir {out} {what} a file, not a folder: choose a folder for data_dir"
                )
            return


class ShardWriter:
    """Appends one split's tokens, rolling over to a new shard every ``shard_tokens`` tokens."""

    def __init__(self, data_dir: Path, split: str, shard_tokens: int, dtype: np.dtype):
        self.data_dir = Path(data_dir)
        self.split = split
        self.shard_tokens = shard_tokens
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.total = 0  # tokens written to this split so far
        self._file = None  # the open .tmp of the current, incomplete shard

    def path(self, index: int) -> Path:
        return self.data_dir / shard_name(self.split, index)

    def resume_at(self, total: int) -> None:
        """Reopen the stream at ``total`` tokens, written and synced by an earlier run.

        Shards before the one holding position ``total`` must exist whole; that shard is cut back
        to ``total`` (it may have grown, or been completed and renamed, after the sync); any later
        shard is removed.
        """
        current, offset = divmod(total, self.shard_tokens)
        for index in range(current):
            self._finalize_if_whole(index)
        for name in os.listdir(self.data_dir):
            match = SHARD_RE.match(name)
            if match and match.group(1) == self.split and int(match.group(2)) > current:
                os.remove(self.data_dir / name)
        final, tmp = self.path(current), self._tmp(current)
        if final.exists():
            os.replace(final, tmp)
        if offset:
            if not tmp.exists() or tmp.stat().st_size < offset * self.dtype.itemsize:
                raise FileNotFoundError(f"{tmp} is missing or shorter than its synced length")
            os.truncate(tmp, offset * self.dtype.itemsize)
            self._file = open(tmp, "ab")  # finish() must complete it even if nothing follows
        elif tmp.exists():
            os.remove(tmp)
        self.total = total

    def _finalize_if_whole(self, index: int) -> None:
        final, tmp = self.path(index), self._tmp(index)
        size = self.shard_tokens * self.dtype.itemsize
        if not final.exists() and tmp.exists() and tmp.stat().st_size >= size:
            os.truncate(tmp, size)  # killed between its last write and its rename
            os.replace(tmp, final)
        if not final.exists() or final.stat().st_size != size:
            raise FileNotFoundError(f"{final} is missing or not {self.shard_tokens} tokens long")

    def _tmp(self, index: int) -> Path:
        return self.data_dir / (shard_name(self.split, index) + TMP_SUFFIX)

    def write(self, tokens: np.ndarray) -> None:
        """Append ``tokens`` (any integer dtype whose values fit), splitting across shards."""
        tokens = tokens.astype(self.dtype, copy=False)
        while len(tokens):
            if self._file is None:
                self._file = open(self._tmp(self.total // self.shard_tokens), "ab")
            room = self.shard_tokens - self.total % self.shard_tokens
            head, tokens = tokens[:room], tokens[room:]
            with naming(self._file.name):
                self._file.write(head.tobytes())
            self.total += len(head)
            if self.total % self.shard_tokens == 0:
                self._complete()

    def _complete(self) -> None:
        """The current shard is full (or the stream ended): sync it and give it its final name."""
        index = (self.total - 1) // self.shard_tokens
        file, self._file = self._file, None
        with naming(file.name):
            try:
                file.flush()
                os.fsync(file.fileno())
            finally:
                file.close()
        os.replace(self._tmp(index), self.path(index))

    def sync(self) -> None:
        """Make every token written so far durable (the incomplete shard stays a .tmp)."""
        if self._file is not None:
            with naming(self._file.name):
                self._file.flush()
                os.fsync(self._file.fileno())

    def finish(self) -> list[dict]:
        """Close the stream: the last, shorter shard gets its final name. Returns the shard list."""
        if self._file is not None:
            self._complete()
        n_full, rest = divmod(self.total, self.shard_tokens)
        sizes = [self.shard_tokens] * n_full + ([rest] if rest else [])
        return [{"file": shard_name(self.split, i), "tokens": n} for i, n in enumerate(sizes)]

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with naming(file.name):
                file.close()
