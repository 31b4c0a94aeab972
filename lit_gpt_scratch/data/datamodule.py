"""``TokenDataModule``: prepared token shards as (B, block_size + 1) int64 batches for Lightning.

    prepare_data: prepare() once per node ─► setup: meta.json, streams, checks against the
    tokenizer and the model ─► train: infinite batches of data.windows / val, test: ValWindows
    (+ named val sets: text files tokenized here, scored whole by LitGPT: ``val_set_batches``)

A training config's ``data:`` section is this constructor's arguments; the first nine are
``prepare``'s, so ``lit-gpt-scratch prepare --config run.yaml`` and ``fit --config run.yaml``
make and read the same directory.

Distributed: the samplers split the data across ranks themselves (Lightning cannot inject a
DistributedSampler into a batch sampler), so DDP/FSDP runs need
``trainer.use_distributed_sampler: false`` (the CLI's default); ``train_dataloader`` refuses
to run without it.

Exact resume: the train sampler's position goes into checkpoints through ``state_dict``. It
counts batches *consumed*, so the LightningModule must call ``mark_batch_consumed()`` once per
training batch, in ``training_step`` (not ``on_train_batch_end``: Lightning runs the callbacks'
``on_train_batch_end``, where ModelCheckpoint saves, before the module's). With
``token_bytes()`` that is the interface LitGPT asks of its data (``train.module.TokenData``).
"""

from __future__ import annotations

import logging
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from lit_gpt_scratch.data.chat_windows import (
    ChatStreams,
    PackedSampler,
    PackedValWindows,
    PackedWindows,
)
from lit_gpt_scratch.data.data_dir import corpus_fingerprint
from lit_gpt_scratch.data.mixture import MixSource, read_mixture, refuse_val_set_names, weights_of
from lit_gpt_scratch.data.mixture_data import MixtureStreams, PooledValWindows, SourceValBatches
from lit_gpt_scratch.data.mixture_sampler import MixtureSampler, another_mixture_message
from lit_gpt_scratch.data.prepare import prepare_from_config
from lit_gpt_scratch.data.samplers import StartSampler
from lit_gpt_scratch.data.train_windows import Windows, mixture_sampler, train_sampler
from lit_gpt_scratch.data.val_sets import ValSetBatches, read_val_set
from lit_gpt_scratch.data.val_split import ValSplit, val_remedy
from lit_gpt_scratch.data.windows import (
    TokenStream,
    TrainWindows,
    ValWindows,
    read_meta,
)
from lit_gpt_scratch.errors import Interrupted, UserError, check_at_least
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

log = logging.getLogger(__name__)


class TokenDataModule(L.LightningDataModule):
    """Token windows from a directory written by ``prepare`` (made on first use if missing).

    Args:
        sources: Document sources, in order: ``stdlib``, files, directories, globs, ``.jsonl``,
            ``.parquet``, or ``hf:<dataset>[?name=..&split=..&data_files=..]``. Or a mixture:
            entries ``{path: <source>, weight: w, name: n}`` (a bare string among them has
            weight 1 and a name derived from its path), each prepared apart into
            ``data_dir/<name>/``; training draws windows from them in proportion to the
            weights (tokens drawn), and validation logs ``val/<name>/loss`` and ``/bpb``.
        tokenizer: ``gpt2`` (offline), another tiktoken encoding name, or a ``.tiktoken`` file.
        data_dir: Directory of ``{train,val}_NNNNNN.bin`` and ``meta.json``.
        val_fraction: Share held out for validation, in (0, 0.5]: of the documents, or of
            each document's tokens (see ``val_split``).
        block_size: Model context length; a sample is a window of ``block_size + 1`` tokens
            (inputs and the targets shifted by one). Must equal the model's ``block_size``.
        shard_tokens: Tokens per shard file (the last shard of a split is shorter).
        text_field: Field of ``.jsonl`` records, column of ``.parquet`` files and datasets.
        prepare_workers: Tokenizer processes; None uses every core, 0 tokenizes in-process.
        val_split: How val is held out: ``documents`` (whole documents), ``tail`` (the last
            ``val_fraction`` of each document, cut after a line end, as nanoGPT splits its
            one file), or ``auto``: whole documents when there are at least
            ``round(1 / val_fraction)`` and the held-out ones make a window of
            ``block_size + 1`` tokens, else the tails (a one-file corpus).
        batch_size: Windows per batch, per device.
        num_workers: DataLoader worker processes (0 reads in the training process).
        pin_memory: Pin batches in page-locked memory (only when CUDA is available).
        persistent_workers: Keep DataLoader workers alive between evaluations.
        val_windows: At most this many val windows, evenly spread through the val split.
        seed: Seed of the training window order (each epoch a new permutation).
        windows: Where training windows start: ``random`` (anywhere in the train stream) or
            ``document_start`` (at a document's first token, then every ``block_size``
            tokens of a longer document; needs the boundary files ``prepare`` writes).
            Validation windows are the same for both.
        allow_approximate_resume: Resume inexactly instead of refusing: from a checkpoint
            saved with another world size or batch size (at the same share of the epoch),
            another ``seed`` (the new order from the same position), another corpus (from
            its first window), or one lacking loop, random or data state. Each is warned.
        prepare_per_node: Run ``prepare`` on the first process of every node (each node has
            its own ``data_dir``: local disks). False: on the first process of the run only,
            for a ``data_dir`` every node sees (shared storage).
        val_sets: Named held-out texts, ``{name: path of a UTF-8 text file}``, each scored
            whole at every validation (and in validate, test) with this run's tokenizer and
            logged as ``val/<name>/loss`` (nats per token) and ``val/<name>/bpb`` (bits per
            byte of the file, the figure ``evaluate --text`` prints): runs with different
            tokenizers or recipes compare on the same text. ``prepare`` ignores them.
        format: ``text``: documents into token shards, as above. ``chat``: conversations
            (``stdlib-chat``, ``.jsonl`` of ``{"messages": [...]}`` or ``{"instruction",
            "input", "output"}`` records, ``hf:``) rendered with the chat template into
            windows of ids plus a loss mask, only the assistant's tokens counted in the loss
            (``data.chat_prepare``); needs a tokenizer with the chat tokens (``<spec>+chat``).
            ``val_split``, ``windows`` and ``text_field`` are text's only.
        overlong: ``chat``: a conversation longer than a window is cut to it (``truncate``)
            or left out (``skip``); both are counted in prepare's summary and meta.json.
        pack: ``chat``: pack several conversations into a window, best-fit (they are kept
            apart by ``model.gpt.init_args.document_mask``, which this needs); False: one
            conversation a window, the rest padding.
    """

    def __init__(
        self,
        sources: list[str | MixSource] = ["stdlib"],  # noqa: B006 - shown by --help; copied
        tokenizer: str = "gpt2",
        data_dir: str = "data/stdlib-gpt2",
        val_fraction: float = 0.005,
        block_size: int = 1024,
        shard_tokens: int = 100_000_000,
        text_field: str = "text",
        prepare_workers: int | None = None,
        val_split: ValSplit = "auto",
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        val_windows: int = 200,
        seed: int = 1234,
        windows: Windows = "random",
        allow_approximate_resume: bool = False,
        prepare_per_node: bool = True,
        val_sets: dict[str, str] | None = None,
        format: Literal["text", "chat"] = "text",
        overlong: Literal["truncate", "skip"] = "truncate",
        pack: bool = True,
    ):
        super().__init__()
        check_at_least("data.batch_size", batch_size, 1)
        check_at_least("data.num_workers", num_workers, 0)
        check_at_least("data.block_size", block_size, 1)
        check_at_least("data.val_windows", val_windows, 1)
        # Read now: a bad file is refused before anything is prepared or written.
        self.val_texts = {name: read_val_set(name, path) for name, path in (val_sets or {}).items()}
        self.mixture = read_mixture(sources)  # None: one corpus (a plain list of strings)
        if format == "chat":
            refuse_text_options(self.mixture, windows)
        refuse_val_set_names(self.mixture, val_sets)
        self.save_hyperparameters()  # the tokenizer etc. travel in checkpoints
        self.prepare_data_per_node = prepare_per_node  # read by Lightning's prepare_data step
        self.sources = list(sources)
        self.window = block_size + 1  # (T + 1): inputs are [:-1], targets [1:]
        self.meta: dict = {}
        self.train_stream: TokenStream | None = None
        self.val_stream: TokenStream | None = None
        self.sampler: StartSampler | MixtureSampler | None = None
        self.streams: MixtureStreams | None = None  # a mixture's sources, after setup
        self._pending_state: dict | None = None  # sampler state loaded before the sampler exists
        self._val_sets: dict[str, ValSetBatches] = {}
        self.chat: ChatStreams | None = None  # data.format chat's ids and masks, after setup

    # --- data on disk ---------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Tokenize the sources into ``data_dir`` unless done already.

        Lightning runs this on one process per node (local rank 0) while the others wait;
        with ``prepare_per_node: false``, on global rank 0 only (shared storage). Or run
        ``python -m lit_gpt_scratch prepare`` beforehand: then this only verifies.

        On a complete directory ``prepare`` is a no-op that verifies the directory was made
        from these sources and settings (under 0.3 s for the stdlib corpus: it lists and stats
        the source files), so we always call it: a config naming another tokenizer or corpus
        than ``data_dir`` holds is refused instead of silently training on the wrong data.
        """
        try:
            prepare_from_config({**self.hparams, "sources": self.sources})
        except KeyboardInterrupt:  # stopped cleanly, resumable: not Lightning's exit code 1
            raise Interrupted from None

    def setup(self, stage: str | None = None) -> None:
        """Open the streams and check the data against the tokenizer and the attached model."""
        h = self.hparams
        self.meta = read_meta(h.data_dir)
        check_tokenizer(self.meta, h.tokenizer, h.data_dir)
        if h.format == "chat":
            self.chat = ChatStreams(h.data_dir, self.meta)
        elif self.meta.get("format") == "chat":
            raise UserError(
                f"data_dir {h.data_dir} holds chat windows, not text shards: set data.format: "
                "chat, or use another data.data_dir"
            )
        elif self.mixture is not None:
            self._setup_mixture(stage)
        else:
            splits = self.meta["splits"]
            # The ids are checked on every read: a damaged shard is named, not embedded.
            dtype, vocab = self.meta["dtype"], self.meta["vocab_size"]
            self.train_stream, self.val_stream = (
                TokenStream(h.data_dir, split, dtype, splits[split], vocab_size=vocab)
                for split in ("train", "val")
            )
            if stage in (None, "fit"):
                remedy = "add sources or lower block_size"
                check_holds_a_window(self.train_stream, self.window, remedy)
            if stage in (None, "fit", "validate", "test"):
                check_holds_a_window(self.val_stream, self.window, val_remedy(self.meta))
        if stage in (None, "fit", "validate", "test"):
            self._val_sets = {**self._source_val_batches(), **self._tokenize_val_sets()}
        module = self.trainer.lightning_module if self.trainer is not None else None
        gpt = getattr(module, "gpt", None)
        if gpt is not None:
            check_against_model(self.meta, h.block_size, gpt)
            if self.chat is not None:
                check_chat_against_model(self.meta, gpt)

    def _setup_mixture(self, stage: str | None) -> None:
        """Each source's streams, each checked to hold a window, named by its folder."""
        self.streams = MixtureStreams(self.hparams.data_dir, self.meta, self.mixture)
        self.train_stream = self.streams.train
        if stage in (None, "fit"):
            for part in self.streams.train_parts:
                check_holds_a_window(part, self.window, "add documents or lower block_size")
        if stage in (None, "fit", "validate", "test"):
            for part, meta in zip(self.streams.val_parts, self.streams.metas, strict=True):
                check_holds_a_window(part, self.window, val_remedy(meta))

    def token_bytes(self) -> torch.Tensor:
        """(vocab_size,) the bytes of text each token id stands for (for bits per byte)."""
        return torch.from_numpy(load_tokenizer(self.hparams.tokenizer).token_bytes())

    # --- loaders --------------------------------------------------------------------------------

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _loader_options(self) -> dict:
        h = self.hparams
        return {
            "num_workers": h.num_workers,
            "pin_memory": h.pin_memory and torch.cuda.is_available(),
            "persistent_workers": h.persistent_workers and h.num_workers > 0,
        }

    def train_dataloader(self) -> DataLoader:
        """Infinite batches: the Trainer's length is ``max_steps``; validate every N steps."""
        rank, world = self._rank_and_world()
        if world > 1 and self._trainer_injects_distributed_sampler():
            raise UserError(
                "TokenDataModule splits windows across ranks itself: set "
                "trainer.use_distributed_sampler: false"
            )
        sampler = self._new_sampler(rank, world)
        # A reloaded loader continues where the last one stood; a checkpoint's state applies once.
        if self.sampler is not None:
            state = self.sampler.state_dict()
        else:
            state = self._position_in_this_corpus(self._pending_state)
        if state:
            sampler.load_state_dict(state)
        self.sampler, self._pending_state = sampler, None
        if self.chat is not None:
            windows = PackedWindows(self.chat.ids["train"], self.chat.masks["train"], self.window)
            return DataLoader(windows, batch_sampler=sampler, **self._loader_options())
        return DataLoader(
            TrainWindows(self.train_stream, self.window),
            batch_sampler=sampler,
            **self._loader_options(),
        )

    def _new_sampler(self, rank: int, world: int) -> StartSampler | MixtureSampler:
        h = self.hparams
        if self.chat is not None:
            return PackedSampler(
                self.chat.windows("train"), self.window, h.batch_size, h.seed, rank, world,
                h.allow_approximate_resume,
            )  # fmt: skip
        if self.mixture is None:
            return train_sampler(
                h.windows, h.data_dir, self.meta, len(self.train_stream), self.window,
                h.batch_size, h.seed, rank, world, h.allow_approximate_resume,
            )  # fmt: skip
        return mixture_sampler(
            h.windows, h.data_dir, self.streams, [e.weight for e in self.mixture], self.window,
            h.batch_size, h.seed, rank, world, h.allow_approximate_resume,
        )  # fmt: skip

    def _trainer_injects_distributed_sampler(self) -> bool:
        connector = getattr(self.trainer, "_accelerator_connector", None)
        return bool(getattr(connector, "use_distributed_sampler", False))

    def val_dataloader(self) -> DataLoader:
        """The same ``val_windows`` windows every time, in order (of a mixture: up to
        ``val_windows`` of each source, pooled and interleaved)."""
        rank, world = self._rank_and_world()
        if self.chat is not None:
            windows = PackedValWindows(
                self.chat.ids["val"], self.chat.masks["val"], self.window,
                self.hparams.val_windows, rank, world,
            )  # fmt: skip
        elif self.mixture is not None:
            windows = PooledValWindows(
                self.streams.val_windows(self.window, self.hparams.val_windows, rank, world)
            )
        else:
            windows = ValWindows(
                self.val_stream, self.window, self.hparams.val_windows, rank, world
            )
        if len(windows) == 0:
            raise UserError(
                f"the val split of {self.hparams.data_dir} has fewer windows than the "
                f"{world} ranks: {val_remedy(self.meta)}"
            )
        return DataLoader(
            windows, batch_size=self.hparams.batch_size, shuffle=False, **self._loader_options()
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def val_set_batches(self) -> dict[str, ValSetBatches]:
        """This rank's batches of each named val set (``data.val_sets``), by name: the same
        windows at every validation. Empty before ``setup`` and without val sets."""
        return self._val_sets

    def _source_val_batches(self) -> dict[str, SourceValBatches]:
        """A mixture's sources' val windows, scored as named sets: ``val/<name>/loss``."""
        if self.mixture is None:
            return {}
        rank, world = self._rank_and_world()
        h, token_bytes = self.hparams, self.token_bytes().long()
        parts = self.streams.val_windows(self.window, h.val_windows, rank, world)
        return {
            name: SourceValBatches(windows, h.batch_size, token_bytes)
            for name, windows in zip(self.streams.names, parts, strict=True)
        }

    def _tokenize_val_sets(self) -> dict[str, ValSetBatches]:
        tok = load_tokenizer(self.hparams.tokenizer)
        rank, world = self._rank_and_world()
        h = self.hparams
        return {
            name: ValSetBatches(
                tok.encode_ordinary(text).tolist(),
                len(text.encode("utf-8")),
                tok.eot_id,
                h.block_size,
                h.batch_size,
                rank,
                world,
            )
            for name, text in self.val_texts.items()
        }

    # --- resume ---------------------------------------------------------------------------------

    def mark_batch_consumed(self) -> None:
        """Count one training batch as used. Call it once per batch, from ``training_step``.

        The DataLoader prefetches, so the sampler cannot tell a batch drawn from one trained
        on; this count is what checkpoints save and a resumed run continues after.
        """
        if self.sampler is None:
            raise RuntimeError("mark_batch_consumed() before train_dataloader()")
        self.sampler.mark_consumed()

    def state_dict(self) -> dict:
        """The train sampler's consumed position, and the corpus it is a position in;
        Lightning saves it in every checkpoint. A mixture's (key ``mixture``) holds each
        source's corpus, weight and windows drawn."""
        state = {"data_dir": str(self.hparams.data_dir)}
        if self.meta and self.mixture is None:
            state["corpus"] = corpus_fingerprint(self.meta)
        if self.sampler is not None:
            key = "sampler" if self.mixture is None else "mixture"
            return {**state, key: self.sampler.state_dict()}
        return {**state, **self._pending_state} if self._pending_state else {}

    def load_state_dict(self, state_dict: dict) -> None:
        has_position = state_dict.get("sampler") or state_dict.get("mixture")
        if has_position and self.sampler is not None:
            state = self._position_in_this_corpus(state_dict)
            if state:
                self.sampler.load_state_dict(state)
        else:
            self._pending_state = state_dict or None

    def _position_in_this_corpus(self, saved: dict | None) -> dict | None:
        """The saved sampler position, if it is one in the corpus this run reads.

        A position in another corpus means nothing: refused, or with
        ``allow_approximate_resume`` the new corpus starts at its first window. The corpus
        is told by the token files' description in meta.json, not by the path: a moved or
        copied ``data_dir`` continues exactly.
        """
        if not saved or not (saved.get("sampler") or saved.get("mixture")):
            return None
        if bool(saved.get("mixture")) != (self.mixture is not None):  # one corpus <-> a mixture
            saved_weights = (saved.get("mixture") or {}).get("weights")
            mine = weights_of(self.mixture) if self.mixture is not None else None
            message = another_mixture_message(saved_weights, mine)
            if not self.hparams.allow_approximate_resume:
                raise UserError(message)
            log.warning("approximate data resume: %s", message.split(";")[0])
            return None
        if self.mixture is not None:  # the sampler checks each source's corpus and weight
            return saved["mixture"]
        fingerprint = saved.get("corpus")
        if fingerprint is None or fingerprint == corpus_fingerprint(self.meta):
            return saved["sampler"]  # a checkpoint from before fingerprints: the path was all
        here, there = self.hparams.data_dir, saved.get("data_dir")
        if not self.hparams.allow_approximate_resume:
            raise UserError(another_corpus_message(here, there))
        log.warning(
            "approximate data resume: data.data_dir %s holds another corpus than the "
            "checkpoint's (%s): its windows start from the first",
            here,
            there,
        )
        return None


def another_corpus_message(data_dir, saved_data_dir) -> str:
    return (
        f"data.data_dir: {data_dir} in the config holds another corpus than the checkpoint's "
        f"{saved_data_dir}, where the saved data position means nothing; resume on the "
        "checkpoint's data_dir, or set data.allow_approximate_resume: true to start this "
        "corpus from its first window"
    )


# --- checks: one-line errors that name both sides -------------------------------------------------


def check_tokenizer(meta: dict, tokenizer: str, data_dir: str) -> None:
    """The shards' dtype and vocabulary must be the ones ``tokenizer`` produces."""
    tok = load_tokenizer(tokenizer)  # cached; gpt2 loads offline in ~0.1 s
    if np.dtype(meta["dtype"]) != tok.dtype or meta["vocab_size"] != tok.vocab_size:
        raise UserError(
            f"{data_dir} holds {meta['dtype']} tokens of a {meta['vocab_size']}-id vocabulary "
            f"(tokenizer {meta['tokenizer']!r}), data.tokenizer {tokenizer!r} needs "
            f"{tok.dtype.name} and {tok.vocab_size}: use another data.data_dir"
        )


def refuse_text_options(mixture, windows: str) -> None:
    """``data.format: chat`` reads one set of conversations in packed windows: a mixture or
    ``data.windows: document_start`` (text's options) would not be honoured, so they are refused."""
    if mixture is not None:
        raise UserError("data.format chat reads one list of sources: a mixture is text's only")
    if windows != "random":
        raise UserError(
            f"data.windows {windows} is for text: chat windows are packed conversations, "
            "drawn in a seeded order"
        )


def check_chat_against_model(meta: dict, gpt) -> None:
    """Packed conversations must not attend to each other: the GPT's document mask, split at
    the data's EOT (each conversation begins with one), keeps them apart."""
    if meta["settings"].get("pack") and not getattr(gpt, "document_mask", False):
        raise UserError(
            "data.pack packs several conversations into a window, and without "
            "model.gpt.init_args.document_mask they would attend to each other: set "
            f"document_mask: true and eot_id: {meta['eot_id']}, or data.pack: false"
        )


def check_holds_a_window(stream: TokenStream, window: int, remedy: str) -> None:
    if len(stream) < window:
        raise UserError(
            f"the {stream.split} split of {stream.data_dir} has {len(stream)} tokens, fewer than "
            f"one window of block_size + 1 = {window}: {remedy}"
        )


def check_against_model(meta: dict, block_size: int, gpt) -> None:
    """Every token id must have a row in the model; windows must be the model's length."""
    if meta["vocab_size"] > gpt.vocab_size:
        raise UserError(
            f"the data has vocab_size {meta['vocab_size']} (tokenizer {meta['tokenizer']!r}), "
            f"more than model.gpt.vocab_size {gpt.vocab_size}: raise it to {meta['vocab_size']}"
        )
    eot_id = getattr(gpt, "eot_id", None)  # what a document mask splits the windows at
    if getattr(gpt, "document_mask", False) and eot_id != meta["eot_id"]:
        raise UserError(
            f"model.gpt.init_args.eot_id is {eot_id}, the data's end-of-text id is "
            f"{meta['eot_id']} (tokenizer {meta['tokenizer']!r}): set eot_id: {meta['eot_id']}"
        )
    if block_size != gpt.block_size:
        raise UserError(
            f"data.block_size {block_size} differs from model.gpt.block_size {gpt.block_size}: "
            "set them equal"
        )
