"""A conversation with a model on its KV cache: each turn feeds only the tokens that are new.

The cache holds the conversation so far (system message, then each user turn, the assistant's
reply and its ``<|end|>``). A new user message adds its tokens and ``<|assistant|>``; the reply
is sampled token by token until ``<|end|>``. When the next turn and its reply would not fit in
``block_size``, the oldest turns are dropped (the system message stays) and the cache is filled
again from the shortened conversation.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

import torch

from lit_gpt_scratch.data.chat_template import ChatTemplate
from lit_gpt_scratch.model.generate import stream


class MessageTooLong(ValueError):
    """A message that leaves no room for a reply even with every earlier turn dropped."""


class ChatSession:
    """Turns with ``gpt`` (eval mode) through tokenizer ``tok`` (with the chat tokens).

    Args:
        max_new_tokens: Most tokens of one reply (fewer when the context has less room).
        sampling: ``stream``'s temperature, top_k, top_p; ``seed`` seeds one generator for
            the whole session.
    """

    def __init__(self, gpt, tok, system: str | None = None, max_new_tokens: int = 200,
                 seed: int | None = None, **sampling):  # fmt: skip
        self.gpt, self.tok, self.template = gpt, tok, ChatTemplate(tok)
        self.system = system
        self.max_new_tokens, self.sampling = max_new_tokens, sampling
        device = next(gpt.parameters()).device
        self.generator = torch.Generator(device=device)
        if seed is not None:
            self.generator.manual_seed(seed)
        self.reset()

    def reset(self) -> None:
        """Forget every turn (the system message stays)."""
        head = [self.tok.eot_id]
        if self.system:
            head += self.template.message("system", self.system)[0]
        self.head = head
        # each turn: the user message, <|assistant|>, the reply, <|end|>
        self.turns: list[list[int]] = []
        self.fed: list[int] = []  # the ids the cache holds, in order
        self.caches = None

    def reply(
        self, text: str, on_text: Callable[[str], None], on_drop: Callable[[int], None] = print
    ) -> str:
        """The assistant's answer to ``text``, handed to ``on_text`` piece by piece as it is
        sampled; ``on_drop`` hears first how many of the oldest turns were dropped, if any."""
        t = self.template
        asked = [*t.message("user", text)[0], t.role_ids["assistant"]]
        room = self.gpt.block_size - len(self.head) - len(asked)
        if room < 1:
            raise MessageTooLong(
                f"the message and system prompt make {len(self.head) + len(asked)} tokens; the "
                f"model reads {self.gpt.block_size}"
            )
        budget = min(self.max_new_tokens, room)
        dropped = 0
        while self.turns and sum(map(len, self.turns)) + budget + 1 > room:
            self.turns.pop(0)  # + 1: the <|end|> closing the reply
            dropped += 1
        if dropped:
            on_drop(dropped)
        prompt = [*self.head, *(i for turn in self.turns for i in turn), *asked]
        if dropped or self.caches is None or prompt[: len(self.fed)] != self.fed:
            self.caches = self.gpt.new_caches(1, self.gpt.block_size)
            self.fed = []
        new = prompt[len(self.fed) :]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        ids: list[int] = []
        stops = (t.end_id, self.tok.eot_id)
        for next_id in stream(self.gpt, new, self.caches, budget, stops, generator=self.generator,
                              vocab_limit=self.tok.vocab_size, **self.sampling):  # fmt: skip
            ids.append(next_id)
            piece = decoder.decode(self.tok.encoding.decode_single_token_bytes(next_id))
            if piece:
                on_text(piece)
        tail = decoder.decode(b"", final=True)
        if tail:
            on_text(tail)
        self.turns.append([*asked, *ids, t.end_id])
        held = self.caches[0].length
        self.fed = [*prompt, *ids][:held]
        return self.tok.decode(ids)
