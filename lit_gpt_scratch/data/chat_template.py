"""The chat template: a conversation as token ids, and which of them are training targets.

    <|endoftext|> <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|end|> ...

Each conversation starts with ``<|endoftext|>``: under the GPT's document mask an EOT begins a
new document, so conversations packed into one window never attend to each other and each one's
positions count from its own start. Every message is its role token, its content (ordinary text:
a literal ``<|user|>`` inside it stays characters) and ``<|end|>``.

Targets: only the assistant's content tokens and the ``<|end|>`` closing each assistant turn are
predicted; the EOT, the role tokens, the system and user text and their ``<|end|>`` are not
(-100 in the targets). A model trained so learns to answer, and to stop, never to write the
user's side. A prompt for a reply is the conversation so far followed by ``<|assistant|>``.
"""

from __future__ import annotations

import numpy as np

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.tokenizer.chat_tokens import ASSISTANT, CHAT_SUFFIX, END, SYSTEM, USER

ROLES = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


class ChatTemplate:
    """Renders conversations with one tokenizer's ids for the chat tokens."""

    def __init__(self, tok):
        special = tok.encoding._special_tokens
        missing = [t for t in (*ROLES.values(), END) if t not in special]
        if missing:
            raise UserError(
                f"tokenizer {tok.spec!r} has no {missing[0]} token: use {tok.spec + CHAT_SUFFIX!r}"
                f" (the chat tokens added), or a vocabulary trained with them reserved"
            )
        self.tok = tok
        self.eot_id = tok.eot_id
        self.role_ids = {role: special[token] for role, token in ROLES.items()}
        self.end_id = special[END]

    def message(self, role: str, content: str) -> tuple[list[int], list[bool]]:
        """One message's ids and whether each is a target (assistant content and its end)."""
        ids = [self.role_ids[role], *self.tok.encode_ordinary(content).tolist(), self.end_id]
        target = role == "assistant"
        return ids, [False] + [target] * (len(ids) - 1)

    def render(self, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """A conversation's ids (N,) int64 and target mask (N,) bool: True where the token is
        a training target (predicted from the ones before it)."""
        ids, mask = [self.eot_id], [False]
        for m in messages:
            more_ids, more_mask = self.message(m["role"], m["content"])
            ids += more_ids
            mask += more_mask
        return np.array(ids, dtype=np.int64), np.array(mask, dtype=bool)

    def prompt(self, messages: list[dict]) -> list[int]:
        """The ids that ask for the next assistant turn: the conversation, then <|assistant|>."""
        return [*self.render(messages)[0].tolist(), self.role_ids["assistant"]]


def targets_of(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Next-token targets of a window of ``ids`` (T+1,) with its ``mask``: (T,) the id that
    follows each input position, -100 where that id is not a target."""
    return np.where(mask[1:], ids[1:], -100)
