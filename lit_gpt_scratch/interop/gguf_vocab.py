"""A project tokenizer as GGUF's ``tokenizer.ggml.*`` fields (llama.cpp's ``gpt2`` BPE model).

The vocabulary and merges are the byte-level ones the Hugging Face export writes
(``hf_tokenizer.byte_level_vocabulary``): token ``i`` is the text of id ``i`` in GPT-2's byte
alphabet, merges are ``"left right"`` in rank order. Special tokens are ``CONTROL`` tokens
with their own text; an id the tokenizer has no token for (a hole in a ranks file, or a row of
a model larger than its tokenizer) is ``[PAD<id>]``, ``UNUSED``, since llama.cpp needs one
token per row of ``token_embd``.

The split regex is named by ``tokenizer.ggml.pre`` where one of llama.cpp's built-in
pre-tokenizers splits as ours does: ``gpt-2`` for GPT-2's pattern, ``llama-bpe`` for GPT-4's
(cl100k's), which ``bytes``, the bundled vocabularies and ``train_tokenizer`` use. Any other
pattern has no name there, and is left out (llama.cpp then splits with its default regex).
"""

from __future__ import annotations

from dataclasses import dataclass

from tiktoken_ext.openai_public import r50k_pat_str

from lit_gpt_scratch.interop.hf_tokenizer import byte_level_vocabulary
from lit_gpt_scratch.tokenizer.chat_tokens import END, has_chat_tokens
from lit_gpt_scratch.tokenizer.encodings import GPT4_SPLIT_PATTERN, Tokenizer

# gguf's TokenType values
NORMAL, CONTROL, UNUSED = 1, 3, 5

# split pattern -> the llama.cpp pre-tokenizer whose regex splits text the same way
PRE_TOKENIZERS = {r50k_pat_str: "gpt-2", GPT4_SPLIT_PATTERN: "llama-bpe"}

# llama.cpp refuses a gpt2 tokenizer without merges; the bytes tokenizer has none, so it gets
# this one, which never applies: no piece of text starts as a symbol "<|endoftext|>"
NEVER_MERGE = "<|endoftext|> <|endoftext|>"


@dataclass
class GGUFVocabulary:
    tokens: list[str]  # (n_vocab,): the text of each id
    token_types: list[int]  # (n_vocab,): NORMAL, CONTROL or UNUSED
    merges: list[str]  # "left right", in rank order
    pre: str | None  # tokenizer.ggml.pre, None where no built-in one splits alike
    eos_id: int  # <|endoftext|>: also bos and padding
    end_of_turn_id: int | None  # <|end|> of a +chat tokenizer, where an assistant turn stops


def gguf_vocabulary(tok: Tokenizer, n_vocab: int) -> GGUFVocabulary:
    """``tok`` with one token for each of the model's ``n_vocab`` ids (``n_vocab`` >=
    ``tok.vocab_size``, which ``checkpoint_tokenizer`` checks)."""
    vocab, merges = byte_level_vocabulary(tok)
    texts = {rank: text for text, rank in vocab.items()}
    types = dict.fromkeys(texts, NORMAL)
    for text, rank in tok.encoding._special_tokens.items():
        texts[rank], types[rank] = text, CONTROL
    tokens = [texts.get(i, f"[PAD{i}]") for i in range(n_vocab)]
    token_types = [types.get(i, UNUSED) for i in range(n_vocab)]
    end = tok.encoding._special_tokens[END] if has_chat_tokens(tok) else None
    return GGUFVocabulary(
        tokens=tokens,
        token_types=token_types,
        merges=[f"{a} {b}" for a, b in merges] or [NEVER_MERGE],
        pre=PRE_TOKENIZERS.get(tok.encoding._pat_str),
        eos_id=tok.eot_id,
        end_of_turn_id=end,
    )
