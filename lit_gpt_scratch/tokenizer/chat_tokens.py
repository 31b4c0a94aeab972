"""Chat tokens: ``<|system|>``, ``<|user|>``, ``<|assistant|>`` and ``<|end|>``.

A tokenizer spec ending in ``+chat`` (``stdlib-4k+chat``, ``gpt2+chat``, ``bytes+chat``) is the
base tokenizer with the four chat tokens as special tokens. Those the base vocabulary lacks take
new ids above its largest one, in the order above: ``gpt2+chat`` has ``<|system|>`` = 50257 ...
``<|end|>`` = 50260 (50,261 ids); ``stdlib-4k+chat`` 4096 ... 4099. A vocabulary trained with them
reserved (``train_tokenizer --special_tokens``) already has them: ``+chat`` adds nothing there.

The spec is what checkpoints record (``data.tokenizer``), so ``generate``, ``chat`` and
``export`` rebuild the same ids from it. Message text is still encoded as ordinary text: a
literal ``<|user|>`` typed by a user is characters, never the control token.
"""

from __future__ import annotations

import functools

import tiktoken

CHAT_SUFFIX = "+chat"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)


@functools.lru_cache(maxsize=8)
def with_chat_tokens(spec: str):
    """The tokenizer ``spec`` (``<base>+chat``) names: the base one plus the chat tokens."""
    from lit_gpt_scratch.tokenizer.encodings import Tokenizer, load_tokenizer

    base = load_tokenizer(spec[: -len(CHAT_SUFFIX)])
    special = dict(base.encoding._special_tokens)
    next_id = base.encoding.max_token_value + 1
    for token in CHAT_TOKENS:
        if token not in special:
            special[token] = next_id
            next_id += 1
    encoding = tiktoken.Encoding(
        name=f"{base.encoding.name}{CHAT_SUFFIX}",
        pat_str=base.encoding._pat_str,
        mergeable_ranks=base.encoding._mergeable_ranks,
        special_tokens=special,
    )
    return Tokenizer(spec, encoding, f"{base.identity}{CHAT_SUFFIX}")


def has_chat_tokens(tok) -> bool:
    return all(token in tok.encoding._special_tokens for token in CHAT_TOKENS)
