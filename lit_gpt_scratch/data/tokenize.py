"""Tokenize one chunk of documents: the work each ``prepare`` worker process does."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from dataclasses import dataclass

import numpy as np

from lit_gpt_scratch.data.sources import Chunk, replace_surrogates
from lit_gpt_scratch.tokenizer.encodings import Tokenizer


@dataclass
class ChunkTokens:
    tokens: np.ndarray  # (N,) every document's ids followed by EOT, in the tokenizer's dtype
    doc_lengths: np.ndarray  # (D,) int64, tokens per document, its EOT included
    nbytes: int  # source bytes this chunk covered
    invalid_utf8: int  # documents whose bytes were not valid UTF-8
    lookalikes: int  # documents holding a special token's text (kept as plain text)
    empty: int  # empty documents, skipped
    binary_files: tuple[str, ...] = ()  # files found binary when read whole, skipped


def tokenize_chunk(chunk: Chunk, tokenizer: Tokenizer) -> ChunkTokens:
    eot = np.array([tokenizer.eot_id], dtype=np.uint32)
    parts: list[np.ndarray] = []
    lengths: list[int] = []
    invalid = lookalikes = empty = 0
    binary: list[str] = []
    for doc in chunk.documents():
        if doc.binary_file:
            binary.append(doc.binary_file)
            continue
        text = doc.text
        if not text:
            empty += 1
            continue
        try:
            ids = tokenizer.encode_ordinary(text)
        except UnicodeEncodeError:  # lone surrogates, e.g. from a JSON "\ud800" escape
            text = replace_surrogates(text)
            ids = tokenizer.encode_ordinary(text)
            doc = type(doc)(text, invalid_utf8=True)
        invalid += doc.invalid_utf8
        # Every tiktoken special token starts with "<|": a cheap test before the exact one.
        lookalikes += "<|" in text and any(s in text for s in tokenizer.special_tokens)
        parts += (ids, eot)
        lengths.append(len(ids) + 1)
    tokens = np.concatenate(parts) if parts else np.empty(0, np.uint32)
    return ChunkTokens(
        tokens=tokens.astype(tokenizer.dtype),  # every id < 2**bits of dtype: see token_dtype
        doc_lengths=np.array(lengths, dtype=np.int64),
        nbytes=chunk.nbytes,
        invalid_utf8=invalid,
        lookalikes=lookalikes,
        empty=empty,
        binary_files=tuple(binary),
    )


# --- worker-process side ---------------------------------------------------------------------

_worker_tokenizer: Tokenizer | None = None


def init_worker(tokenizer: Tokenizer, parent_pid: int | None = None) -> None:
    """Process-pool initializer: each worker loads the tokenizer once (rebuilt from its spec).

    With ``parent_pid``, the worker dies with its parent, however that ends (``kill -9``
    included): a worker blocked on the task queue would otherwise wait forever, holding the
    queue's pipes and the terminal's output open.
    """
    global _worker_tokenizer
    if parent_pid is not None:
        die_with_parent(parent_pid)
    _worker_tokenizer = tokenizer


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel send SIGKILL to this process when its parent ends (Linux), and exit at
    once if the parent is already gone (it ended before the request took effect)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(1)


def tokenize_in_worker(chunk: Chunk) -> ChunkTokens:
    assert _worker_tokenizer is not None, "init_worker was not called in this process"
    return tokenize_chunk(chunk, _worker_tokenizer)
