"""A project tokenizer as Hugging Face tokenizer files: ``tokenizer.json`` and its configs.

Every project tokenizer is a tiktoken encoding: byte-level BPE given by *ranks* (token bytes ->
id) and a split regex. The ``tokenizers`` library's byte-level BPE computes the same function
when it is given

- the vocabulary: each token's bytes written in GPT-2's printable byte alphabet, with its id;
- the merges, in rank order: for each multi-byte token, the pair of lower-ranked tokens that
  BPE joins into it (found by running BPE on the token's own bytes with the lower ranks only);
- ``ignore_merges``: a split piece that is a whole token is that token, as tiktoken does;
- the encoding's split regex as a ``Split`` pre-tokenizer, then ``ByteLevel`` without its
  own regex; the ``ByteLevel`` decoder;
- the special tokens as added tokens with their ids, and ``split_special_tokens`` in the
  config, so that text is always ordinary text: a literal ``<|endoftext|>`` stays characters,
  as in ``Tokenizer.encode_ordinary``.

The ``bytes`` tokenizer is the case with no merges: ids 0..255 are the bytes, then EOT.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.tokenizer.encodings import EOT, Tokenizer, gpt2_byte_alphabet


def byte_characters() -> list[str]:
    """The printable character that stands for each byte 0..255 in a byte-level vocabulary."""
    chars = [""] * 256
    for char, byte in gpt2_byte_alphabet().items():
        chars[byte] = char
    return chars


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that makes each multi-byte token, in rank order: the two parts BPE leaves when
    it runs on the token's bytes with only the ranks below the token's own."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = _bpe_below(token, rank, ranks)
        if len(parts) != 2:
            raise UserError(
                f"tokenizer rank {rank} ({token!r}) is not the merge of two lower-ranked tokens: "
                "no byte-level BPE reaches it"
            )
        merges.append((parts[0], parts[1]))
    return merges


def _bpe_below(token: bytes, limit: int, ranks: dict[bytes, int]) -> list[bytes]:
    """tiktoken's merge loop over ``token``'s bytes, joining only pairs ranked below ``limit``:
    at each step the adjacent pair whose join has the lowest rank (the leftmost on ties)."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, where = limit, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best:
                best, where = rank, i
        if where < 0:
            break
        parts[where : where + 2] = [parts[where] + parts[where + 1]]
    return parts


def oniguruma_pattern(pattern: str) -> str:
    """``pattern`` (tiktoken's regex dialect) for the ``tokenizers`` library's Oniguruma, which
    reads ``X{n,m}+`` as ``(X{n,m})+``, not as a possessive interval: the possessive interval
    becomes the atomic group ``(?>X{n,m})``, the same match. Everything else means the same."""
    stack: list[list[str]] = [[]]  # the atoms of each open group, so a quantifier wraps one
    i = 0
    while i < len(pattern):
        atoms, char = stack[-1], pattern[i]
        interval = re.match(r"\{\d+(,\d*)?\}\+", pattern[i:])
        if interval and atoms:
            atoms[-1] = f"(?>{atoms[-1]}{interval.group()[:-1]})"
            i += interval.end()
        elif char == "\\":
            size = 2
            if pattern[i + 1 : i + 2] in ("p", "P") and pattern[i + 2 : i + 3] == "{":
                size = pattern.index("}", i) + 1 - i  # \p{L} is one atom
            atoms.append(pattern[i : i + size])
            i += size
        elif char == "[":
            end = _class_end(pattern, i)
            atoms.append(pattern[i:end])
            i = end
        elif char == "(":
            stack.append([char])
            i += 1
        elif char == ")" and len(stack) > 1:
            group = "".join(stack.pop()) + char
            stack[-1].append(group)
            i += 1
        else:
            atoms.append(char)
            i += 1
    return "".join("".join(atoms) for atoms in stack)


def _class_end(pattern: str, start: int) -> int:
    """The index after the ``]`` closing the character class that opens at ``start``."""
    i = start + 1
    if pattern[i : i + 1] == "^":
        i += 1
    if pattern[i : i + 1] == "]":  # a leading ] is a member
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def byte_level_vocabulary(tok: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``tok``'s ordinary tokens as byte-level BPE writes them: each token's bytes in GPT-2's
    printable byte alphabet -> its id, and the merges in rank order (special tokens apart).
    The Hugging Face and the GGUF tokenizers are both built from it."""
    ranks: dict[bytes, int] = tok.encoding._mergeable_ranks
    chars = byte_characters()

    def text(token: bytes) -> str:
        return "".join(chars[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    return vocab, [(text(a), text(b)) for a, b in bpe_merges(ranks)]


def tokenizer_json(tok: Tokenizer) -> str:
    """``tokenizer.json`` (the ``tokenizers`` library's format) encoding as ``tok`` does."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    encoding = tok.encoding
    vocab, merges = byte_level_vocabulary(tok)
    specials = dict(sorted(encoding._special_tokens.items(), key=lambda item: item[1]))
    vocab.update(specials)  # in the vocabulary with their own ids; added below as special
    model = models.BPE(vocab=vocab, merges=merges, ignore_merges=True, byte_fallback=False)
    hf = HFTokenizer(model)
    split = Regex(oniguruma_pattern(encoding._pat_str))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(split, behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return hf.to_str(pretty=False)


def write_tokenizer_files(
    tok: Tokenizer, directory: Path, model_max_length: int, chat_template: str | None = None
) -> None:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` for
    ``AutoTokenizer.from_pretrained(directory)``."""
    directory = Path(directory)
    (directory / "tokenizer.json").write_text(tokenizer_json(tok), encoding="utf-8")
    specials = sorted(tok.encoding._special_tokens, key=tok.encoding._special_tokens.get)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": EOT,
        "pad_token": EOT,
        "unk_token": None,
        "additional_special_tokens": [t for t in specials if t != EOT],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        # text is ordinary text, as encode_ordinary; but a chat template's rendering is one
        # string whose role tokens must be recognised
        "split_special_tokens": chat_template is None,
        "model_max_length": model_max_length,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    special_map = {key: config[key] for key in ("bos_token", "eos_token", "pad_token")}
    special_map["additional_special_tokens"] = config["additional_special_tokens"]
    for name, content in (
        ("tokenizer_config.json", config),
        ("special_tokens_map.json", special_map),
    ):
        (directory / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
