"""A prepared mixture opened for training: the sources' token streams, and validation by source.

data_dir/meta.json (manifest) + data_dir/<name>/ ─► MixtureStreams
    train: every source's train shards as one stream (source i at offsets[i]) ◄─ MixtureSampler
    val:   each source's ValWindows ─► PooledValWindows (val/loss, val/bpb: all pooled)
                                   └─► SourceValBatches (val/<name>/loss, val/<name>/bpb)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from lit_gpt_scratch.data.data_dir import corpus_fingerprint
from lit_gpt_scratch.data.mixture import MixEntry
from lit_gpt_scratch.data.windows import TokenStream, ValWindows, read_meta
from lit_gpt_scratch.errors import UserError


class MixtureStreams:
    """The streams of the mixture prepared in ``data_dir`` (manifest ``meta``) for ``entries``."""

    def __init__(self, data_dir: str | Path, meta: dict, entries: list[MixEntry]):
        self.data_dir = Path(data_dir)
        recorded = [s["name"] for s in meta.get("mixture") or []]
        self.names = [e.name for e in entries]
        if recorded != self.names:
            raise UserError(
                f"{self.data_dir} holds the mixture of sources {recorded or 'none (one corpus)'}, "
                f"data.sources names {self.names}: prepare the mixture into another data_dir"
            )
        self.metas = [read_meta(self.data_dir / name) for name in self.names]
        dtype, vocab = meta["dtype"], meta["vocab_size"]
        # The ids are checked on every read: a damaged shard is named, not embedded.
        self.train_parts, self.val_parts = (
            [
                TokenStream(self.data_dir / n, split, dtype, m["splits"][split], vocab_size=vocab)
                for n, m in zip(self.names, self.metas, strict=True)
            ]
            for split in ("train", "val")
        )
        # One stream over every source's train shards, in order: one dataset for the loader.
        shards = [
            {"file": f"{name}/{shard['file']}", "tokens": shard["tokens"]}
            for name, m in zip(self.names, self.metas, strict=True)
            for shard in m["splits"]["train"]
        ]
        self.train = TokenStream(self.data_dir, "train", dtype, shards, vocab_size=vocab)
        self.sizes = [len(part) for part in self.train_parts]
        self.corpora = [corpus_fingerprint(m) for m in self.metas]

    def val_windows(self, window: int, max_windows: int, rank: int, world: int) -> list[ValWindows]:
        """Each source's fixed val windows (at most ``max_windows`` each), this rank's share."""
        return [ValWindows(s, window, max_windows, rank, world) for s in self.val_parts]


class PooledValWindows(Dataset):
    """All sources' val windows as one dataset, interleaved evenly (source ``i``'s window ``k``
    at position ``(k + 1/2) / n_i``), so that any prefix of it (``trainer.limit_val_batches``)
    holds every source in its share."""

    def __init__(self, parts: list[ValWindows]):
        self.parts = parts
        self.order = sorted(
            ((k + 0.5) / len(part), i, k) for i, part in enumerate(parts) for k in range(len(part))
        )

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> torch.Tensor:
        _, i, k = self.order[index]
        return self.parts[i][k]  # (window,) int64


class SourceValBatches:
    """One source's val windows as scored batches, as ``data.val_sets`` gives them to LitGPT:
    (inputs (B, T), targets (B, T), bytes (B,): the bytes of text the targets stand for).
    Every target is scored; the ranks hold the same number of windows (``ValWindows``)."""

    def __init__(self, windows: ValWindows, batch_size: int, token_bytes: torch.Tensor):
        self.windows, self.batch_size = windows, batch_size
        self.token_bytes = token_bytes  # (vocab_size,)

    def __len__(self) -> int:
        return -(-len(self.windows) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.windows), self.batch_size):
            rows = range(start, min(start + self.batch_size, len(self.windows)))
            batch = torch.stack([self.windows[i] for i in rows])  # (B, T + 1)
            targets = batch[:, 1:]  # (B, T)
            yield batch[:, :-1], targets, self.token_bytes[targets].sum(dim=1)
