"""``chat``: talk with a chat fine-tuned checkpoint, one turn at a time, on the KV cache."""

from __future__ import annotations

import sys

from lit_gpt_scratch.cli.chat_session import ChatSession, MessageTooLong
from lit_gpt_scratch.cli.commands import check_sampling
from lit_gpt_scratch.data.chat_template import ChatTemplate
from lit_gpt_scratch.devices import usable_device
from lit_gpt_scratch.train.checkpoint_files import checkpoint_tokenizer, load_gpt

PROMPT = "you> "


def chat(
    ckpt_path: str,
    system: str | None = None,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    seed: int | None = 1337,
    device: str = "auto",
    tokenizer: str | None = None,
) -> None:
    """Talk with a checkpoint fine-tuned on conversations (data.format chat), turn by turn.

    Each line you type is a user message; the reply streams as it is sampled and ends at
    <|end|>. /reset forgets the conversation, /quit (or end of input) leaves. When a turn would
    not fit in the model's block_size, the oldest turns are dropped, and a line on stderr says
    so. With stdin not a terminal (a pipe, a file), each line is a message and each reply is
    printed followed by a newline, without prompts: scripts and tests can drive it.

    Args:
        ckpt_path: A checkpoint written by fit (a chat fine-tune: its tokenizer has the chat
            tokens).
        system: A system message that opens the conversation (kept when turns are dropped).
        max_new_tokens: Most tokens of one reply.
        temperature: Softmax temperature; 0 is greedy decoding.
        top_k: Sample among the k most likely tokens only (None: all).
        top_p: Sample among the most likely tokens holding this much probability (None: all).
        seed: Random seed of the session, for repeatable replies (None: a fresh one).
        device: cpu, cuda, cuda:N, or auto (cuda when available).
        tokenizer: Tokenizer spec; by default the one recorded in the checkpoint.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    loaded = load_gpt(ckpt_path, usable_device(device))
    tok = checkpoint_tokenizer(loaded, tokenizer)
    ChatTemplate(tok)  # a tokenizer without the chat tokens: one line, before any prompt
    session = ChatSession(
        loaded.gpt, tok, system, max_new_tokens, seed,
        temperature=temperature, top_k=top_k, top_p=top_p,
    )  # fmt: skip
    interactive = sys.stdin.isatty()
    block = loaded.gpt.block_size

    def dropped(n: int) -> None:
        turns = "turn" if n == 1 else "turns"
        print(f"(dropped the oldest {n} {turns} to stay within {block} tokens)", file=sys.stderr)

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    for line in _lines(interactive):
        text = line.strip()
        if not text:
            continue
        if text == "/quit":
            break
        if text == "/reset":
            session.reset()
            print("(conversation reset)", file=sys.stderr)
            continue
        try:
            session.reply(text, show, dropped)
        except MessageTooLong as e:
            print(f"error: {e}: say it in fewer words", file=sys.stderr)
            continue
        print(flush=True)


def _lines(interactive: bool):
    """The user's lines: read with a prompt at a terminal, else from stdin as it comes."""
    if not interactive:
        yield from sys.stdin
        return
    while True:
        try:
            yield input(PROMPT)
        except EOFError:
            print()
            return
