"""Which tokens ``prepare`` holds out for validation: ``data.val_split``.

- ``documents``: whole documents. Document ``i`` (0-based, counting non-empty ones) goes to
  ``val`` when ``i % round(1 / val_fraction) == 1``, the rest to ``train``.
- ``tail``: the end of every document, as nanoGPT splits its single file. A document of ``n``
  tokens (its EOT not counted) is cut at ``p = floor(n * (1 - val_fraction))``; the cut moves
  back to just after the last token before ``p`` whose text ends with a newline, when the
  document has one there (else it stays at ``p``). Tokens before the cut go to ``train``, the
  rest to ``val``, and each part is followed by one EOT, so both splits stay streams of
  EOT-ended pieces (a part with no tokens is left out, EOT included).
- ``auto``: ``documents`` when the corpus has at least ``round(1 / val_fraction)`` documents
  and the ones it would hold out make at least one window of ``block_size + 1`` tokens;
  else ``tail``. A one-file corpus (a book, tiny Shakespeare) thus gets a val split.

Every document lies whole inside one chunk of work (``sources.py``), so both rules route a
chunk's tokens on their own: a resumed ``prepare`` needs only the rule and the counters.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from lit_gpt_scratch.data.sources import TextFiles

ValSplit = Literal["auto", "documents", "tail"]
VAL_SPLITS = ("auto", "documents", "tail")
RULE_WORDS = {"documents": "whole documents", "tail": "tail of each document"}


def is_val_document(doc_index, val_fraction: float):
    """The documents rule: document ``i`` (counting non-empty documents from 0) is held out
    when ``i % round(1 / val_fraction) == 1``. Works on an int or on an array of indices."""
    return doc_index % round(1 / val_fraction) == 1


@dataclass(frozen=True)
class Choice:
    """The rule a prepare uses, and why: what its summary line and meta.json say."""

    rule: str  # "documents" or "tail"
    reason: str  # "asked" (data.val_split named it), or auto's: "enough", "few", "short"
    val_tokens: int = 0  # "short": the tokens whole val documents would have held

    def as_dict(self) -> dict:
        return asdict(self)

    def why(self, documents: int, val_fraction: float, block_size: int) -> str:
        """E.g. ``auto: 1 document``; ``documents``: the corpus's non-empty ones."""
        if self.reason == "asked":
            return f"data.val_split: {self.rule}"
        if self.reason == "short":
            return (
                f"auto: the whole documents held out would make {self.val_tokens:,} tokens, "
                f"fewer than one window of {block_size + 1:,}"
            )
        why = f"auto: {documents:,} document{'' if documents == 1 else 's'}"
        if self.reason == "few":
            why += f", fewer than {round(1 / val_fraction):,}"
        return why


def describe(val_split: dict) -> str:
    """meta.json's ``val_split`` in words: ``tail of each document (auto: 1 document)``."""
    return f"{RULE_WORDS[val_split['rule']]} ({val_split['why']})"


class WholeDocumentCount:
    """What ``auto`` decides on, counted chunk by chunk: the documents so far and the tokens
    of those the documents rule would hold out. Both only grow, so once ``enough`` is true it
    stays true: the count may stop there."""

    def __init__(self, val_fraction: float, block_size: int):
        self.val_fraction, self.window = val_fraction, block_size + 1
        self.documents = 0
        self.val_tokens = 0

    def add(self, doc_lengths: np.ndarray) -> None:
        """``doc_lengths``: (D,) tokens of each next document, its EOT included."""
        index = self.documents + np.arange(len(doc_lengths))
        self.val_tokens += int(doc_lengths[is_val_document(index, self.val_fraction)].sum())
        self.documents += len(doc_lengths)

    @property
    def enough_documents(self) -> bool:
        return self.documents >= round(1 / self.val_fraction)

    @property
    def enough(self) -> bool:
        return self.enough_documents and self.val_tokens >= self.window

    def choice(self) -> Choice:
        """Auto's rule once the count is complete (or stopped at ``enough``)."""
        if self.enough:
            return Choice("documents", "enough")
        if not self.enough_documents:
            return Choice("tail", "few")
        return Choice("tail", "short", self.val_tokens)


def most_documents(chunks) -> int | None:
    """At most this many documents, known from planning alone: the non-empty files of a
    corpus of whole text files (one document each). None when records must be read to tell
    (``.jsonl``, ``.parquet``, datasets)."""
    if not isinstance(chunks, list) or not all(isinstance(c, TextFiles) for c in chunks):
        return None
    return sum(_has_bytes(path) for chunk in chunks for path in chunk.paths)


def _has_bytes(path: str) -> bool:
    return os.path.getsize(path) > 0  # an empty file is an empty document, skipped


@dataclass
class Split:
    """One chunk's tokens routed to the two splits, each in document order."""

    train: np.ndarray  # (N_train,) in the tokenizer's dtype
    val: np.ndarray  # (N_val,)
    train_documents: int  # documents with tokens in train (under tail, a document may be
    val_documents: int  # counted in both)


def split_documents(
    tokens: np.ndarray, doc_lengths: np.ndarray, first_index: int, val_fraction: float
) -> Split:
    """The documents rule on one chunk: ``tokens`` (N,) holds documents ``first_index``,
    ``first_index + 1``, ... of ``doc_lengths`` (D,) tokens each, EOT included."""
    is_val = is_val_document(first_index + np.arange(len(doc_lengths)), val_fraction)  # (D,)
    in_val = np.repeat(is_val, doc_lengths)  # (N,)
    n_val = int(is_val.sum())
    return Split(tokens[~in_val], tokens[in_val], len(doc_lengths) - n_val, n_val)


def split_tails(
    tokens: np.ndarray, doc_lengths: np.ndarray, val_fraction: float, ends_line: np.ndarray
) -> Split:
    """The tail rule on one chunk (see the module docstring). ``ends_line``: (vocab,) bool,
    the ids whose text ends with a newline (``Tokenizer.ends_line``)."""
    ends = np.cumsum(doc_lengths)  # (D,) one past each document's EOT
    starts = ends - doc_lengths  # (D,)
    cuts = tail_cuts(tokens, starts, ends - 1, val_fraction, ends_line)  # (D,)
    train: list[np.ndarray] = []  # heads, each followed by its document's EOT
    val: list[np.ndarray] = []  # tails, which end with it
    n_train = 0
    for start, cut, end in zip(starts.tolist(), cuts.tolist(), ends.tolist(), strict=True):
        if cut > start:  # the EOT after a head: the next document starts afresh, as in val
            train += (tokens[start:cut], tokens[end - 1 : end])
            n_train += 1
        if cut < end - 1:
            val.append(tokens[cut:end])
    return Split(_joined(train, tokens.dtype), _joined(val, tokens.dtype), n_train, len(val))


def tail_cuts(
    tokens: np.ndarray,
    starts: np.ndarray,
    text_ends: np.ndarray,
    val_fraction: float,
    ends_line: np.ndarray,
) -> np.ndarray:
    """(D,) where each document's val tail starts: document ``d`` is ``tokens[starts[d] :
    text_ends[d]]`` (its EOT at ``text_ends[d]``)."""
    lengths = text_ends - starts  # (D,) n, the EOT not counted
    points = starts + (lengths * (1 - val_fraction)).astype(np.int64)  # (D,) floor, as int()
    # The last line end at or before each position (-1: none yet), over the whole chunk.
    positions = np.arange(len(tokens))
    last_line_end = np.maximum.accumulate(np.where(ends_line[tokens], positions, -1))  # (N,)
    before = np.where(points > starts, last_line_end[np.maximum(points - 1, 0)], -1)  # (D,)
    # A line end of an earlier document does not count: this one has none before its point.
    return np.where(before >= starts, before + 1, points)


def _joined(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype)


def val_remedy(meta: dict) -> str:
    """What gives a val split too short for one window more tokens, by the rule that made it
    (a directory from before ``val_split`` existed used whole documents)."""
    if meta.get("val_split", {}).get("rule", "documents") == "tail":
        return "raise data.val_fraction"
    return "raise data.val_fraction, or hold out the tail of each document: data.val_split: tail"


def choice_from_state(state: dict) -> Choice:
    """The rule of an interrupted run, from its checkpoint. One from before ``val_split``
    existed used whole documents."""
    saved = state.get("val_split")
    return Choice(**saved) if saved else Choice("documents", "asked")


def auto_picks_documents(meta: dict, val_fraction: float, block_size: int) -> bool:
    """Whether ``auto`` would have held out whole documents for a directory the documents
    rule made: its counts are exactly what ``auto`` decides on."""
    count = WholeDocumentCount(val_fraction, block_size)
    count.documents = meta["documents"]["train"] + meta["documents"]["val"]
    count.val_tokens = meta["tokens"]["val"]
    return count.enough
