"""``chat``: turns on the KV cache, the oldest turns dropped to fit, and the command driven
through a pipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from lit_gpt_scratch.cli.chat_session import ChatSession
from lit_gpt_scratch.model.build import build_gpt
from lit_gpt_scratch.model.generate import stream
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer
from lit_gpt_scratch.train.checkpoint_files import save_gpt

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = "bytes+chat"


def spec(block_size=64) -> dict:
    return {
        "class_path": "lit_gpt_scratch.model.gpt.GPT",
        "init_args": {"vocab_size": 261, "block_size": block_size, "n_layer": 1, "n_head": 2,
                      "d_model": 32, "document_mask": True, "eot_id": 256, "init_std": 0.3},
    }  # fmt: skip


def model(block_size=64):
    torch.manual_seed(0)
    return build_gpt(spec(block_size)).eval()


def test_a_turn_on_the_cache_replies_as_the_whole_conversation_read_afresh():
    gpt, tok = model(), load_tokenizer(TOKENIZER)
    cached = ChatSession(gpt, tok, "Be kind.", max_new_tokens=6, temperature=0)
    pieces = []
    cached.reply("hi", pieces.append)
    second = cached.reply("more", pieces.append)
    assert "".join(pieces).endswith(second)
    fresh = ChatSession(gpt, tok, "Be kind.", max_new_tokens=6, temperature=0)
    fresh.turns = cached.turns[:1]  # the first turn, as ids: its cache is filled afresh
    assert fresh.reply("more", lambda piece: None) == second


def test_the_oldest_turns_are_dropped_to_stay_within_block_size():
    gpt, tok = model(block_size=48), load_tokenizer(TOKENIZER)
    session = ChatSession(gpt, tok, "S", max_new_tokens=8, temperature=0)
    drops = []
    for n in range(6):
        session.reply(f"message {n}", lambda piece: None, drops.append)
        assert session.caches[0].length <= 48
    assert drops and all(d >= 1 for d in drops)
    assert session.head[:2] == [256, tok.encoding._special_tokens["<|system|>"]]  # kept


def test_stream_stops_at_a_stop_id_without_yielding_it():
    gpt = model()
    prompt = [256, 258, 104, 105, 260, 259]
    first = list(stream(gpt, prompt, gpt.new_caches(1, 64), 3, temperature=0))
    assert len(first) == 3
    stopped = list(stream(gpt, prompt, gpt.new_caches(1, 64), 3, (first[1],), temperature=0))
    assert stopped == first[:1]


def run_chat(ckpt: Path, text: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "lit_gpt_scratch", "chat", f"--ckpt_path={ckpt}", *args]
    return subprocess.run(command, input=text, capture_output=True, text=True, env=env)


def test_two_turns_through_a_pipe(tmp_path):
    ckpt = tmp_path / "chat.ckpt"
    torch.manual_seed(0)
    save_gpt(ckpt, build_gpt(spec()), spec(), TOKENIZER)
    options = ("--device=cpu", "--temperature=0", "--max_new_tokens=5", "--system=Be brief.")
    result = run_chat(ckpt, "hello\n\n/reset\nagain\n/quit\nnever read\n", *options)
    assert result.returncode == 0, result.stderr
    replies = result.stdout.split("\n")
    assert len(replies) == 3 and replies[2] == ""  # two replies, each on its line
    assert "you>" not in result.stdout  # no prompts on a pipe
    assert "(conversation reset)" in result.stderr
    # after /reset the conversation starts again: the same message gets the same greedy reply
    again = run_chat(ckpt, "again\n", *options)
    assert again.stdout.split("\n")[0] == replies[1]


def test_a_checkpoint_without_chat_tokens_is_refused_in_one_line(tmp_path):
    ckpt = tmp_path / "text.ckpt"
    plain = {**spec(), "init_args": {**spec()["init_args"], "vocab_size": 257}}
    save_gpt(ckpt, build_gpt(plain), plain, "bytes")
    result = run_chat(ckpt, "hello\n", "--device=cpu")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: tokenizer 'bytes' has no <|system|> token: use 'bytes+chat' (the chat tokens "
        "added), or a vocabulary trained with them reserved"
    )
