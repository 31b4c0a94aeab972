"""``prepare``: tokenize document sources into memory-mappable shards plus ``meta.json``.

    sources ─► chunks ─► worker processes (read + tokenize) ─► main (in order) ─► train/val shards

Guarantees:

- Deterministic: the same sources and settings give byte-identical files, whatever the number
  of workers (results are consumed in chunk order).
- Validation is chosen by whole documents: document ``i`` (0-based, counting non-empty ones)
  goes to ``val`` when ``i % round(1 / val_fraction) == 1``, so any corpus of two or more
  documents has a non-empty val split.
- Atomic and resumable: shards appear under their final name only when complete, progress is
  checkpointed to ``prepare_state.json`` at chunk boundaries, and ``meta.json`` is written last.
  A rerun after a kill continues from the last checkpoint and ends byte-identical to an
  uninterrupted run; a rerun on a finished directory is a no-op.
- Ctrl-C and SIGTERM stop at the next chunk boundary with the progress made durable (never
  inside the process pool's internals, where it could hang its shutdown); a second one stops
  at once. Workers die with the main process, however it ends.
- Bad input (missing or binary source, empty corpus, corpus smaller than one training window)
  raises ``UserError`` and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import logging
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from pathlib import Path

import numpy as np

from lit_gpt_scratch.data.data_dir import (
    STATE,
    already_prepared,
    read_json,
    refuse_foreign_files,
    refuse_if_other_run,
    remove_outputs,
    roll_back_to_checkpoint,
    write_json,
)
from lit_gpt_scratch.data.shards import (
    META,
    SPLITS,
    ShardWriter,
    refuse_file_as_data_dir,
)
from lit_gpt_scratch.data.sources import (
    HF_PREFIX,
    Chunk,
    plan_sources,
    refuse_data_dir_in_sources,
)
from lit_gpt_scratch.data.stopping import sigint_ignored, stop_requests
from lit_gpt_scratch.data.tokenize import (
    ChunkTokens,
    init_worker,
    tokenize_chunk,
    tokenize_in_worker,
)
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.files import FolderLock, sync_folder
from lit_gpt_scratch.tokenizer.encodings import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_SECONDS = 5.0  # how often progress is made durable, at most
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)
COUNTERS = ("bytes", "invalid_utf8", "lookalikes", "empty", "train_documents", "val_documents")


def prepare(
    sources: list[str],
    tokenizer: str = "gpt2",
    data_dir: str = "data/stdlib-gpt2",
    val_fraction: float = 0.005,
    block_size: int = 1024,
    shard_tokens: int = 100_000_000,
    text_field: str = "text",
    prepare_workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Tokenize ``sources`` into ``data_dir`` (shards + meta.json) and return the meta dict.

    Args:
        sources: Document sources, in order: ``stdlib``, files, directories, globs, ``.jsonl``,
            ``.parquet``, or ``hf:<dataset>[?name=..&split=..&data_files=..]``.
        tokenizer: ``gpt2`` (offline), another tiktoken encoding name, or a ``.tiktoken`` file.
        data_dir: Output directory for ``{train,val}_NNNNNN.bin`` and ``meta.json``.
        val_fraction: Share of documents held out for validation, in (0, 0.5].
        block_size: Model context length; the train split must hold one window of
            ``block_size + 1`` tokens.
        shard_tokens: Tokens per shard file (the last shard of a split is shorter).
        text_field: Field of ``.jsonl`` records, column of ``.parquet`` files and datasets.
        prepare_workers: Tokenizer processes; None uses every core, 0 tokenizes in-process.
        progress: Show a progress bar (MB/s and tokens) on stderr.
    """
    _check_options(val_fraction, block_size, shard_tokens, prepare_workers)
    refuse_data_dir_in_sources(Path(data_dir), sources)
    tok = load_tokenizer(tokenizer)
    plan = plan_sources(sources, text_field)
    if plan.total_bytes == 0:
        raise UserError(f"the corpus is empty: sources {sources} hold no text")
    settings = {
        "format_version": FORMAT_VERSION,
        "tokenizer": tok.identity,
        "sources": [_normalize_source(s) for s in sources],
        "manifest": plan.manifest,
        "val_fraction": val_fraction,
        "shard_tokens": shard_tokens,
        "text_field": text_field,
    }
    out = Path(data_dir)
    refuse_file_as_data_dir(out)
    run_settings = {**settings, "chunk_bytes": plan.chunk_bytes}  # chunk indices depend on it
    # Every check of what is there reads only: a complete directory is used as it is.
    meta = read_json(out / META)
    if meta is not None:
        return already_prepared(out, meta, settings, block_size)
    refuse_if_other_run(out, run_settings)
    refuse_foreign_files(out)
    created = not out.exists()
    # There is work to do: one prepare at a time (another one would interleave its writes).
    lock = FolderLock(out, f"data_dir {out}")
    lock.acquire()
    try:
        meta = read_json(out / META)
        if meta is not None:  # another prepare completed it just before we took the lock
            lock.remove_and_release()
            return already_prepared(out, meta, settings, block_size)
        state = refuse_if_other_run(out, run_settings)
        writers = {s: ShardWriter(out, s, shard_tokens, tok.dtype) for s in SPLITS}
        run = _Run(out, tok, writers, val_fraction, run_settings, state)
        try:
            try:
                run.tokenize(plan.chunks, plan.total_bytes, prepare_workers, progress)
                meta = run.finish(sources, block_size, plan.skipped_binary)
            finally:
                for w in writers.values():
                    w.close()
        except UserError:  # bad input: leave nothing behind. A kill or Ctrl-C keeps it for resume.
            remove_outputs(out, remove_dir=created, lock=lock)
            raise
        except OSError as e:
            if e.errno not in OUT_OF_SPACE:
                raise
            # Give the space back: a fresh run leaves nothing, a resumed one its last checkpoint.
            if state is None:
                remove_outputs(out, remove_dir=created, lock=lock)
                then = "prepare again"
            else:
                roll_back_to_checkpoint(out, shard_tokens, tok.dtype)
                then = "run the same command again to continue from its last checkpoint"
            raise UserError(
                f"{e.filename or out}: {e.strerror}: free some space (or choose another "
                f"data_dir) and {then}"
            ) from None
        lock.remove_and_release()  # a complete directory: its shards and meta.json, nothing else
        return meta
    finally:
        lock.release()


def prepare_from_config(data: dict, progress: bool = True) -> dict:
    """``prepare`` with the options a ``data:`` section holds (TokenDataModule's keys: the
    loader's own, such as ``batch_size``, are not prepare's and are left out)."""
    options = inspect.signature(prepare).parameters
    return prepare(**{k: v for k, v in data.items() if k in options}, progress=progress)


def is_val_document(doc_index, val_fraction: float):
    """The val rule: document ``i`` (counting non-empty documents from 0) is held out when
    ``i % round(1 / val_fraction) == 1``. Works on an int or on an array of indices."""
    return doc_index % round(1 / val_fraction) == 1


def documents_with_split(chunks, val_fraction: float) -> Iterator[tuple[bool, str]]:
    """Each non-empty document of ``chunks``, in order, with whether ``prepare`` holds it out
    for val at ``val_fraction`` (0: none). For readers of the sources outside ``prepare``."""
    index = 0
    for chunk in chunks:
        for doc in chunk.documents():
            if doc.text:
                yield bool(val_fraction) and bool(is_val_document(index, val_fraction)), doc.text
                index += 1


class _Run:
    """One pass over the chunks, resumable from a checkpoint ``state``."""

    def __init__(self, out: Path, tok: Tokenizer, writers, val_fraction, settings, state):
        self.out, self.tok, self.writers, self.settings = out, tok, writers, settings
        self.val_fraction = val_fraction
        if state is None:
            remove_outputs(out, remove_dir=False)  # strays from a run killed before its 1st sync
            self.next_chunk = 0
            self.counters = dict.fromkeys(COUNTERS, 0)
            self.binary_files: list[str] = []  # found binary by the workers, past the probe
        else:
            self.next_chunk = state["next_chunk"]
            self.counters = state["counters"]
            self.binary_files = state.get("binary_files", [])
            try:
                for split, w in writers.items():
                    w.resume_at(state["tokens"][split])
            except FileNotFoundError as e:
                raise UserError(
                    f"cannot resume {out}: {e}; delete {out} and run prepare again"
                ) from None
            log.info("resuming %s at chunk %d", out, self.next_chunk)
        self.started = time.perf_counter()
        self.bytes_at_start = self.counters["bytes"]

    @property
    def documents(self) -> int:
        return self.counters["train_documents"] + self.counters["val_documents"]

    def tokenize(self, chunks: Iterable[Chunk], total_bytes, workers, progress) -> None:
        last_sync = time.monotonic()
        todo = islice(chunks, self.next_chunk, None)
        with (
            _progress_bar(total_bytes, self.counters["bytes"], progress) as bar,
            stop_requests() as stop,  # outlives the pool: its shutdown is covered too
            contextlib.closing(_map_in_order(todo, self.tok, workers)) as results,
        ):
            try:
                for result in results:
                    self._route(result)
                    self.next_chunk += 1
                    bar.update(result.nbytes)
                    bar.set_postfix_str(f"{self.tokens / 1e6:,.1f}M tokens", refresh=False)
                    if stop:
                        break
                    if time.monotonic() - last_sync >= CHECKPOINT_SECONDS:
                        self._checkpoint()
                        last_sync = time.monotonic()
            except BrokenProcessPool:
                if not stop:
                    raise
                # the signal went to the whole process group: the workers ended with it
            if stop:  # a chunk boundary, outside the pool's internals: keep the progress made
                self._checkpoint()
                stop.raise_it()

    @property
    def tokens(self) -> int:
        return sum(w.total for w in self.writers.values())

    def _route(self, result: ChunkTokens) -> None:
        """Send each document of the chunk to train or val, keeping document order."""
        doc_index = self.documents + np.arange(len(result.doc_lengths))
        is_val = is_val_document(doc_index, self.val_fraction)
        ends = np.cumsum(result.doc_lengths)
        starts = ends - result.doc_lengths
        pos = 0
        for j in np.flatnonzero(is_val):
            self.writers["train"].write(result.tokens[pos : starts[j]])
            self.writers["val"].write(result.tokens[starts[j] : ends[j]])
            pos = ends[j]
        self.writers["train"].write(result.tokens[pos:])
        n_val = int(is_val.sum())
        self.counters["val_documents"] += n_val
        self.counters["train_documents"] += len(is_val) - n_val
        for key in ("invalid_utf8", "lookalikes", "empty"):
            self.counters[key] += getattr(result, key)
        self.binary_files += result.binary_files
        self.counters["bytes"] += result.nbytes

    def _checkpoint(self) -> None:
        """Make everything so far durable, then record where a rerun continues."""
        for w in self.writers.values():
            w.sync()
        sync_folder(self.out)
        state = {
            "settings": self.settings,
            "next_chunk": self.next_chunk,
            "tokens": {s: w.total for s, w in self.writers.items()},
            "counters": self.counters,
            "binary_files": self.binary_files,
        }
        write_json(self.out / STATE, state)

    def finish(self, sources: list[str], block_size: int, skipped_binary: list[str]) -> dict:
        if self.documents == 0:
            raise UserError(f"the corpus is empty: sources {sources} hold only empty documents")
        train, val = self.writers["train"].total, self.writers["val"].total
        if train < block_size + 1:
            raise UserError(
                f"the corpus is smaller than one training window: the train split has {train} "
                f"tokens, block_size {block_size} needs {block_size + 1}"
            )
        splits = {s: w.finish() for s, w in self.writers.items()}
        sync_folder(self.out)
        settings = {k: v for k, v in self.settings.items() if k != "chunk_bytes"}
        skipped_binary = skipped_binary + self.binary_files
        c = self.counters
        meta = {
            "format_version": FORMAT_VERSION,
            "tokenizer": self.tok.spec,
            "vocab_size": self.tok.vocab_size,
            "eot_id": self.tok.eot_id,
            "dtype": self.tok.dtype.name,
            "splits": splits,
            "tokens": {"train": train, "val": val},
            "documents": {"train": c["train_documents"], "val": c["val_documents"]},
            "sources": sources,
            "stats": {
                "source_bytes": c["bytes"],
                "invalid_utf8_documents": c["invalid_utf8"],
                "special_token_lookalike_documents": c["lookalikes"],
                "empty_documents_skipped": c["empty"],
                "binary_files_skipped": len(skipped_binary),
            },
            "settings": settings,
        }
        write_json(self.out / META, meta)  # the directory is complete from here on
        (self.out / STATE).unlink(missing_ok=True)
        self._report(meta, skipped_binary, block_size)
        return meta

    def _report(self, meta: dict, skipped_binary: list[str], block_size: int) -> None:
        seconds = time.perf_counter() - self.started
        mb = (self.counters["bytes"] - self.bytes_at_start) / 1e6
        docs, tokens, stats = meta["documents"], meta["tokens"], meta["stats"]
        log.info(
            "prepared %s: train %s tokens (%s documents), val %s tokens (%s documents), "
            "%s, %.1f MB in %.1f s (%.1f MB/s)",
            self.out,
            f"{tokens['train']:,}",
            f"{docs['train']:,}",
            f"{tokens['val']:,}",
            f"{docs['val']:,}",
            meta["dtype"],
            mb,
            seconds,
            mb / max(seconds, 1e-9),
        )
        notes = {
            "invalid_utf8_documents": "documents with invalid UTF-8 (bad bytes became U+FFFD)",
            "special_token_lookalike_documents": "documents with special-token text (kept as text)",
            "empty_documents_skipped": "empty documents skipped",
            "binary_files_skipped": "binary files skipped",
        }
        for key, what in notes.items():
            if stats[key]:
                log.info("  %s %s", f"{stats[key]:,}", what)
        for path in skipped_binary[:5]:
            log.info("  skipped binary file %s", path)
        if tokens["val"] < block_size + 1:
            log.warning(
                "  the val split has %d tokens, fewer than one window of %d: raise val_fraction",
                tokens["val"],
                block_size + 1,
            )


def _map_in_order(chunks: Iterator[Chunk], tok: Tokenizer, workers: int | None):
    """tokenize_chunk over ``chunks``, results in input order, with bounded work in flight."""
    if workers is None:  # the cores this process may run on, which a container can limit
        workers = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        )
    if workers == 0:
        yield from (tokenize_chunk(c, tok) for c in chunks)
        return
    # spawn, not fork: forking a process that runs threads (tqdm, torch) can deadlock the child.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, context, initializer=init_worker, initargs=(tok, os.getpid())
    ) as pool:
        pending = deque()
        try:
            with sigint_ignored():  # the first submits start every worker
                pending.extend(pool.submit(tokenize_in_worker, c) for c in islice(chunks, workers))
            for chunk in chunks:
                pending.append(pool.submit(tokenize_in_worker, chunk))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _progress_bar(total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1000,
        desc="prepare",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _normalize_source(source: str) -> str:
    if source == "stdlib" or source.startswith(HF_PREFIX):
        return source
    return os.path.abspath(os.path.expanduser(source))


def _check_options(val_fraction, block_size, shard_tokens, workers) -> None:
    if not 0 < val_fraction <= 0.5:
        raise UserError(f"data.val_fraction must be in (0, 0.5], got {val_fraction}")
    if block_size < 1:
        raise UserError(f"data.block_size must be at least 1, got {block_size}")
    if shard_tokens < 1:
        raise UserError(f"data.shard_tokens must be at least 1, got {shard_tokens}")
    if workers is not None and workers < 0:
        raise UserError(f"data.prepare_workers must be 0 or more, got {workers}")
