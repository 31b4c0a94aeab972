"""``train_tokenizer``: fit a byte-level BPE vocabulary to a corpus and write a tiktoken ranks file.

The merges are learned by Hugging Face ``tokenizers`` (a well-kept Rust trainer that streams
documents); encoding always goes through tiktoken, like every other tokenizer here. The output is
``<out>.tiktoken`` (``base64(token) rank`` per line: the 256 single bytes first, rank = byte
value, then one rank per merge in the order it was learned) and the sidecar ``<out>.json`` with
the split pattern and the special tokens, which take the ids above the last rank. Both are what
``data.tokenizer: <out>.tiktoken`` reads (see ``encodings.py``).

Pre-tokenization is GPT-4's pattern: digits in groups of at most three, and runs of spaces kept
together except the last one, which joins the next word, so Python indentation becomes a few
tokens instead of one per space.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from lit_gpt_scratch.data.prepare import documents_with_split
from lit_gpt_scratch.data.sources import plan_sources, replace_surrogates
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.files import write_atomic
from lit_gpt_scratch.tokenizer.encodings import (
    EOT,
    GPT4_SPLIT_PATTERN,
    gpt2_byte_alphabet,
    load_tokenizer,
)

log = logging.getLogger(__name__)


def train_tokenizer(
    sources: list[str],
    vocab_size: int,
    out: str,
    val_fraction: float = 0.005,
    special_tokens: list[str] | None = None,
    text_field: str = "text",
    max_bytes: int | None = None,
    overwrite: bool = False,
) -> None:
    """Train a byte-level BPE on the sources prepare reads and write a tiktoken ranks file.

    Args:
        sources: Document sources, as in data.sources (stdlib, files, dirs, globs, .jsonl,
            .parquet, hf:...).
        vocab_size: Ids in all: 256 bytes, the merges, and the special tokens at the top.
        out: Output ranks file, ending in .tiktoken; a sidecar .json is written beside it.
        val_fraction: Skip the documents prepare would hold out for validation with this
            data.val_fraction, so they stay unseen (0 trains on every document).
        special_tokens: Special tokens, <|endoftext|> first among them (default: only it).
        text_field: Field of .jsonl records, column of .parquet files and datasets.
        max_bytes: Train on at most this many bytes of text (None: the whole corpus).
        overwrite: Replace an existing out file.
    """
    specials = [EOT] if special_tokens is None else list(special_tokens)
    path = _check_options(vocab_size, out, val_fraction, specials, max_bytes, overwrite)
    plan = plan_sources(sources, text_field)
    corpus = _Corpus(plan.chunks, val_fraction, max_bytes)
    start = time.perf_counter()
    ranks = learn_ranks(corpus.texts(), vocab_size - len(specials))
    seconds = time.perf_counter() - start
    if corpus.documents == 0:
        raise UserError(f"the corpus is empty: sources {sources} hold no training text")
    special_ids = {token: len(ranks) + i for i, token in enumerate(specials)}
    write_ranks_file(path, ranks, special_ids)
    _check_decodes_exactly(path, ranks)
    n_ids = len(ranks) + len(specials)
    if n_ids < vocab_size:
        log.warning(
            "the corpus supports only %d merges: the vocabulary has %d ids, not %d",
            len(ranks) - 256,
            n_ids,
            vocab_size,
        )
    log.info(
        "wrote %s: %d ids (256 bytes, %d merges, %d special) from %.1f MB of %d documents "
        "in %.1f s",
        path,
        n_ids,
        len(ranks) - 256,
        len(specials),
        corpus.bytes / 1e6,
        corpus.documents,
        seconds,
    )


def learn_ranks(texts: Iterator[str], n_ranks: int) -> dict[bytes, int]:
    """BPE ranks learned from ``texts``: single bytes 0..255, then merges in learned order."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated"), byte_level]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=n_ranks, initial_alphabet=byte_level.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(texts, trainer)
    # The trainer's strings use GPT-2's printable stand-ins for bytes: map them back.
    alphabet = gpt2_byte_alphabet()
    ranks = {bytes([b]): b for b in range(256)}
    for merge in json.loads(bpe.to_str())["model"]["merges"]:
        first, second = merge if isinstance(merge, list) else merge.split(" ")
        token = bytes(alphabet[c] for c in first + second)
        ranks.setdefault(token, len(ranks))  # two merges spelling the same bytes keep the first
    return ranks


def write_ranks_file(path: Path, ranks: dict[bytes, int], special_ids: dict[str, int]) -> None:
    """Write the ranks file and its sidecar, each through a temporary file and a rename."""
    lines = b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in ranks.items())
    sidecar = json.dumps({"pat_str": GPT4_SPLIT_PATTERN, "special_tokens": special_ids}, indent=1)
    for target, data in ((path.with_suffix(".json"), sidecar.encode()), (path, lines)):
        try:
            write_atomic(target, data)
        except OSError as e:
            raise UserError(f"{target}: cannot write it ({e.strerror})") from None


class _Corpus:
    """The training documents: non-empty, not held out for val, up to ``max_bytes``."""

    def __init__(self, chunks, val_fraction: float, max_bytes: int | None):
        self.chunks, self.val_fraction, self.max_bytes = chunks, val_fraction, max_bytes
        self.documents = self.bytes = 0

    def texts(self) -> Iterator[str]:
        for held_out, text in documents_with_split(self.chunks, self.val_fraction):
            if held_out:
                continue
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError:  # lone surrogates: tokenizers cannot take them
                text = replace_surrogates(text)
                size = len(text.encode("utf-8"))
            if self.max_bytes is not None and self.bytes + size > self.max_bytes:
                return
            self.documents += 1
            self.bytes += size
            yield text


def _check_options(vocab_size, out, val_fraction, specials, max_bytes, overwrite) -> Path:
    if EOT not in specials:
        raise UserError(f"--special_tokens must include {EOT}")
    if len(set(specials)) != len(specials) or not all(specials):
        raise UserError("--special_tokens must be distinct, non-empty strings")
    if vocab_size < 256 + len(specials):
        raise UserError(
            f"--vocab_size {vocab_size} is too small: 256 bytes and {len(specials)} special "
            "token(s) need at least " + str(256 + len(specials))
        )
    if vocab_size > 2**32:
        raise UserError(f"--vocab_size {vocab_size} does not fit in uint32 token files")
    if not 0 <= val_fraction <= 0.5:
        raise UserError(f"--val_fraction must be in [0, 0.5], got {val_fraction}")
    if max_bytes is not None and max_bytes < 1:
        raise UserError(f"--max_bytes must be at least 1, got {max_bytes}")
    path = Path(out).expanduser()
    if path.suffix != ".tiktoken":
        raise UserError(f"--out {out} must end in .tiktoken (data.tokenizer recognizes it so)")
    if not path.parent.is_dir():
        raise UserError(f"--out {out}: directory {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise UserError(f"--out {out} exists: pass --overwrite true to replace it")
    return path


def _check_decodes_exactly(path: Path, ranks: dict[bytes, int]) -> None:
    # Read the file back the way training will, and check every id decodes to its own bytes.
    encoding = load_tokenizer(str(path)).encoding
    for token, rank in ranks.items():
        if encoding.decode_single_token_bytes(rank) != token:
            raise UserError(f"{path}: rank {rank} does not decode to its bytes")  # a bug, not input
