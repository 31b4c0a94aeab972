"""``prepare``: tokenize document sources into memory-mappable shards plus ``meta.json``.

    sources ─► chunks ─► worker processes (read + tokenize) ─► main (in order) ─► train/val shards

Guarantees:

- Deterministic: the same sources and settings give byte-identical files, whatever the number
  of workers (results are consumed in chunk order).
- Validation is held out by ``val_split`` (``val_split.py``): whole documents, or the tail
  of each document (cut at a line end), which ``auto`` picks when the corpus has too few
  documents for the first; the summary line and meta.json say which.
- Document boundaries: beside each shard, the offsets of its EOTs (``documents.py``), written
  before the shard gets its final name and listed in meta.json under ``boundaries``.
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
import functools
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

from lit_gpt_scratch.data.data_dir import (
    STATE,
    already_prepared,
    read_json,
    refuse_foreign_files,
    refuse_if_other_run,
    remove_outputs,
    remove_stale_json_temporaries,
    roll_back_to_checkpoint,
    write_json,
)
from lit_gpt_scratch.data.documents import BOUNDARIES, DocumentShardWriter
from lit_gpt_scratch.data.mixture import MixSource, read_mixture
from lit_gpt_scratch.data.mixture_prepare import prepare_mixture
from lit_gpt_scratch.data.shards import (
    META,
    SPLITS,
    refuse_file_as_data_dir,
)
from lit_gpt_scratch.data.sources import (
    Chunk,
    normalize_source,
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
from lit_gpt_scratch.data.val_split import (
    VAL_SPLITS,
    Choice,
    Split,
    ValSplit,
    WholeDocumentCount,
    choice_from_state,
    describe,
    is_val_document,
    most_documents,
    split_documents,
    split_tails,
    val_remedy,
)
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.files import FolderLock, sync_folder
from lit_gpt_scratch.tokenizer.encodings import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_SECONDS = 5.0  # how often progress is made durable, at most
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)
COUNTERS = (
    *("bytes", "invalid_utf8", "lookalikes", "empty"),
    *("documents", "train_documents", "val_documents"),  # under tail, one document is in both
)


def prepare(
    sources: list[str | MixSource],
    tokenizer: str = "gpt2",
    data_dir: str = "data/stdlib-gpt2",
    val_fraction: float = 0.005,
    block_size: int = 1024,
    shard_tokens: int = 100_000_000,
    text_field: str = "text",
    prepare_workers: int | None = None,
    val_split: ValSplit = "auto",
    progress: bool = True,
) -> dict:
    """Tokenize ``sources`` into ``data_dir`` (shards + meta.json) and return the meta dict.

    A mixture (any entry a ``{path, weight, name}`` mapping) prepares each source apart into
    ``data_dir/<name>/`` with this function and writes the mixture's manifest as
    ``data_dir/meta.json`` (``mixture_prepare``); it returns that manifest.

    Args:
        sources: Document sources, in order: ``stdlib``, files, directories, globs, ``.jsonl``,
            ``.parquet``, or ``hf:<dataset>[?name=..&split=..&data_files=..]``; or mixture
            entries ``{path: <source>, weight: w, name: n}`` (see ``data.mixture``).
        tokenizer: ``gpt2`` (offline), another tiktoken encoding name, or a ``.tiktoken`` file.
        data_dir: Output directory for ``{train,val}_NNNNNN.bin`` and ``meta.json``.
        val_fraction: Share held out for validation, in (0, 0.5]: of the documents, or of
            each document's tokens (see ``val_split``).
        block_size: Model context length; the train split must hold one window of
            ``block_size + 1`` tokens.
        shard_tokens: Tokens per shard file (the last shard of a split is shorter).
        text_field: Field of ``.jsonl`` records, column of ``.parquet`` files and datasets.
        prepare_workers: Tokenizer processes; None uses every core, 0 tokenizes in-process.
        val_split: How val is held out: ``documents`` (whole documents), ``tail`` (the last
            ``val_fraction`` of each document, cut after a line end), or ``auto``: whole
            documents when there are at least ``round(1 / val_fraction)`` and the held-out
            ones make a window of ``block_size + 1`` tokens, else the tails.
        progress: Show a progress bar (MB/s and tokens) on stderr.
    """
    _check_options(val_fraction, block_size, shard_tokens, prepare_workers, val_split)
    mixture = read_mixture(sources)
    if mixture is not None:
        options = {
            "tokenizer": tokenizer, "data_dir": data_dir, "val_fraction": val_fraction,
            "block_size": block_size, "shard_tokens": shard_tokens, "text_field": text_field,
            "prepare_workers": prepare_workers, "val_split": val_split, "progress": progress,
        }  # fmt: skip
        return prepare_mixture(mixture, prepare, options)
    refuse_data_dir_in_sources(Path(data_dir), sources)
    tok = load_tokenizer(tokenizer)
    plan = plan_sources(sources, text_field)
    if plan.total_bytes == 0:
        raise UserError(f"the corpus is empty: sources {sources} hold no text")
    settings = {
        "format_version": FORMAT_VERSION,
        "tokenizer": tok.identity,
        "sources": [normalize_source(s) for s in sources],
        "manifest": plan.manifest,
        "val_fraction": val_fraction,
        "val_split": val_split,  # as asked: auto's pick is in meta.json's val_split
        "shard_tokens": shard_tokens,
        "text_field": text_field,
    }
    out = Path(data_dir)
    refuse_file_as_data_dir(out)
    run_settings = {**settings, "chunk_bytes": plan.chunk_bytes}  # chunk indices depend on it
    # Every check of what is there reads only: a complete directory is used as it is.
    meta = read_json(out / META)
    if meta is not None and meta.get("format") == "chat":
        raise UserError(
            f"data_dir {out} holds chat windows, not text shards: set data.format: chat, or "
            "use another data.data_dir"
        )
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
        remove_stale_json_temporaries(out)  # a kill inside a state write left its temporary
        state = refuse_if_other_run(out, run_settings)
        if state is not None:  # the interrupted run's rule: auto decides once per directory
            choice = choice_from_state(state)
        else:
            replan = functools.partial(plan_sources, sources, text_field, plan.chunk_bytes)
            try:
                choice = _choose(
                    val_split, val_fraction, block_size, plan, replan, tok, prepare_workers
                )
            except UserError:  # bad input met while counting: leave nothing behind
                remove_outputs(out, remove_dir=created, lock=lock)
                raise
        writers = {
            s: DocumentShardWriter(out, s, shard_tokens, tok.dtype, tok.eot_id) for s in SPLITS
        }
        run = _Run(out, tok, writers, val_fraction, choice, run_settings, state)
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
                roll_back_to_checkpoint(out, shard_tokens, tok.dtype, tok.eot_id)
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
    function = prepare
    if data.get("format") == "chat":  # conversations into packed windows with a loss mask
        from lit_gpt_scratch.data.chat_prepare import prepare_chat as function
    options = inspect.signature(function).parameters
    return function(**{k: v for k, v in data.items() if k in options}, progress=progress)


def _choose(val_split: str, val_fraction, block_size, plan, replan, tok, workers) -> Choice:
    """The rule of a fresh run. ``auto`` counts documents (tokenizing them) only as far as it
    must: not at all when planning alone shows too few (a one-file corpus costs nothing
    more), else until there are enough. ``replan()``: the same sources planned afresh."""
    if val_split != "auto":
        return Choice(val_split, "asked")
    count = WholeDocumentCount(val_fraction, block_size)
    most = most_documents(plan.chunks)
    if most is not None and most < round(1 / val_fraction):
        return count.choice()
    log.info("val_split auto: counting documents (up to %d)", round(1 / val_fraction))
    # A stream can be read once: the count reads a fresh one and leaves the plan's to the run.
    chunks = plan.chunks if isinstance(plan.chunks, list) else replan().chunks
    _count_documents(count, chunks, tok, workers)
    return count.choice()


def _count_documents(count: WholeDocumentCount, chunks, tok: Tokenizer, workers) -> None:
    """Tokenize ``chunks`` into ``count`` until it has enough; stoppable as the run is."""
    with (
        stop_requests() as stop,
        contextlib.closing(_map_in_order(iter(chunks), tok, workers)) as results,
    ):
        try:
            for result in results:
                count.add(result.doc_lengths)
                if count.enough or stop:
                    break
        except BrokenProcessPool:
            if not stop:
                raise
        if stop:  # nothing is written yet: a rerun counts again
            stop.raise_it()


def documents_with_split(chunks, val_fraction: float) -> Iterator[tuple[bool, str]]:
    """Each non-empty document of ``chunks``, in order, with whether ``prepare``'s documents
    rule holds it out for val at ``val_fraction`` (0: none). For readers of the sources outside
    ``prepare``; the tail rule cuts tokens, which text readers do not see."""
    index = 0
    for chunk in chunks:
        for doc in chunk.documents():
            if doc.text:
                yield bool(val_fraction) and bool(is_val_document(index, val_fraction)), doc.text
                index += 1


class _Run:
    """One pass over the chunks, resumable from a checkpoint ``state``."""

    def __init__(
        self, out: Path, tok: Tokenizer, writers, val_fraction, choice: Choice, settings, state
    ):
        self.out, self.tok, self.writers, self.settings = out, tok, writers, settings
        self.val_fraction, self.choice = val_fraction, choice
        if state is None:
            remove_outputs(out, remove_dir=False)  # strays from a run killed before its 1st sync
            self.next_chunk = 0
            self.counters = dict.fromkeys(COUNTERS, 0)
            self.binary_files: list[str] = []  # found binary by the workers, past the probe
        else:
            self.next_chunk = state["next_chunk"]
            c = state["counters"]  # one from before "documents" was counted used whole documents
            self.counters = {"documents": c["train_documents"] + c["val_documents"], **c}
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
        """Send the chunk's tokens to train and val by the rule, keeping document order."""
        split = self._split(result)
        self.writers["train"].write(split.train)
        self.writers["val"].write(split.val)
        self.counters["documents"] += len(result.doc_lengths)
        self.counters["train_documents"] += split.train_documents
        self.counters["val_documents"] += split.val_documents
        for key in ("invalid_utf8", "lookalikes", "empty"):
            self.counters[key] += getattr(result, key)
        self.binary_files += result.binary_files
        self.counters["bytes"] += result.nbytes

    def _split(self, result: ChunkTokens) -> Split:
        tokens, lengths = result.tokens, result.doc_lengths
        if self.choice.rule == "tail":
            return split_tails(tokens, lengths, self.val_fraction, self.tok.ends_line)
        return split_documents(tokens, lengths, self.counters["documents"], self.val_fraction)

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
            "val_split": self.choice.as_dict(),
        }
        write_json(self.out / STATE, state)

    def finish(self, sources: list[str], block_size: int, skipped_binary: list[str]) -> dict:
        if self.counters["documents"] == 0:
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
            BOUNDARIES: {s: w.boundary_files() for s, w in self.writers.items()},
            "tokens": {"train": train, "val": val},
            "documents": {"train": c["train_documents"], "val": c["val_documents"]},
            "val_split": {
                "rule": self.choice.rule,
                "why": self.choice.why(c["documents"], self.val_fraction, block_size),
            },
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
            "%s, %.1f MB in %.1f s (%.1f MB/s); val: %s",
            self.out,
            f"{tokens['train']:,}",
            f"{docs['train']:,}",
            f"{tokens['val']:,}",
            f"{docs['val']:,}",
            meta["dtype"],
            mb,
            seconds,
            mb / max(seconds, 1e-9),
            describe(meta["val_split"]),
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
                "  the val split has %d tokens, fewer than one window of %d: %s",
                tokens["val"],
                block_size + 1,
                val_remedy(meta),
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


def _check_options(val_fraction, block_size, shard_tokens, workers, val_split) -> None:
    if val_split not in VAL_SPLITS:
        raise UserError(f"data.val_split must be one of {', '.join(VAL_SPLITS)}, got {val_split!r}")
    if not 0 < val_fraction <= 0.5:
        raise UserError(f"data.val_fraction must be in (0, 0.5], got {val_fraction}")
    if block_size < 1:
        raise UserError(f"data.block_size must be at least 1, got {block_size}")
    if shard_tokens < 1:
        raise UserError(f"data.shard_tokens must be at least 1, got {shard_tokens}")
    if workers is not None and workers < 0:
        raise UserError(f"data.prepare_workers must be 0 or more, got {workers}")
