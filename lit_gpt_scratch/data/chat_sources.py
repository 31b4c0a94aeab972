"""Sources of conversations for ``data.format: chat``, each record checked and made messages.

- ``stdlib-chat``: the offline set generated from the standard library (``stdlib_chat.py``);
- a ``.jsonl`` file (or a glob of them), one record a line;
- ``hf:<dataset>[?name=..&split=..&data_files=..]`` with the ``hf`` extra, streamed.

A record is either a conversation, ``{"messages": [{"role": "system"|"user"|"assistant",
"content": "..."}, ...]}``, or an instruction, ``{"instruction", "input", "output"}``
(Alpaca's shape: the user's turn is the instruction, then a blank line and the input when there
is one; the assistant's is the output). A record that is neither, a message without a known
role or with content that is not text, an empty assistant turn, or a conversation with no
assistant turn at all is a one-line ``UserError`` naming the record.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lit_gpt_scratch.data.chat_template import ROLES
from lit_gpt_scratch.data.sources import HF_PREFIX, open_hf_stream
from lit_gpt_scratch.data.stdlib_chat import STDLIB_CHAT, stdlib_chat_version, stdlib_conversations
from lit_gpt_scratch.errors import UserError

Conversation = tuple[str, list[dict]]  # (where it came from, for messages; its messages)


def conversations(sources: list[str]) -> Iterator[Conversation]:
    """Every conversation of ``sources``, in order, checked."""
    for source in sources:
        if source == STDLIB_CHAT:
            yield from stdlib_conversations()
        elif source.startswith(HF_PREFIX):
            _, stream = open_hf_stream(source, f"source {source}")
            for n, record in enumerate(stream):
                where = f"source {source}: record {n}"
                yield where, to_messages(record, where)
        else:
            for path in _jsonl_files(source):
                yield from _jsonl_conversations(path)


def manifest(sources: list[str]) -> list:
    """What the conversations depend on, to tell a changed source from a prepared one: the
    Python version for ``stdlib-chat``, each file's size and modification time, a hub spec."""
    entries = []
    for source in sources:
        if source == STDLIB_CHAT:
            entries.append([source, stdlib_chat_version()])
        elif source.startswith(HF_PREFIX):
            entries.append([source])
        else:
            for path in _jsonl_files(source):
                stat = os.stat(path)
                entries.append([path, stat.st_size, stat.st_mtime_ns])
    return entries


def _jsonl_files(source: str) -> list[str]:
    paths = sorted(glob.glob(source)) if glob.has_magic(source) else [source]
    if not paths or not all(Path(p).is_file() for p in paths):
        missing = next((p for p in paths if not Path(p).is_file()), source)
        raise UserError(
            f"chat source {missing} does not exist: give stdlib-chat, .jsonl files or hf:<dataset>"
        )
    odd = next((p for p in paths if not p.endswith(".jsonl")), None)
    if odd is not None:
        raise UserError(f"chat source {odd} is not a .jsonl file of conversations")
    return paths


def _jsonl_conversations(path: str) -> Iterator[Conversation]:
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}: line {n}"
                try:
                    record = json.loads(line.decode("utf-8-sig"))
                except UnicodeDecodeError:
                    raise UserError(f"{where} is not valid UTF-8") from None
                except json.JSONDecodeError as e:
                    raise UserError(f"{where} is not valid JSON ({e.msg})") from None
                yield where, to_messages(record, where)
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None


def to_messages(record, where: str) -> list[dict]:
    """A record (a conversation or an instruction) as checked messages."""
    if isinstance(record, dict) and "messages" in record:
        messages = record["messages"]
    elif isinstance(record, dict) and "instruction" in record and "output" in record:
        messages = _from_instruction(record, where)
    else:
        raise UserError(
            f'{where} is neither a conversation ({{"messages": [...]}}) nor an instruction '
            '({"instruction", "input", "output"})'
        )
    check_messages(messages, where)
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _from_instruction(record: dict, where: str) -> list[dict]:
    for key in ("instruction", "input", "output"):
        if key in record and not isinstance(record[key], str):
            raise UserError(f"{where}: field {key!r} is {type(record[key]).__name__}, not text")
    user = record["instruction"]
    if record.get("input"):
        user = f"{user}\n\n{record['input']}"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]


def check_messages(messages, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' is not a non-empty list of messages")
    for n, m in enumerate(messages, start=1):
        if not isinstance(m, dict) or "role" not in m:
            raise UserError(f"{where}: message {n} has no 'role'")
        if m["role"] not in ROLES:
            raise UserError(
                f"{where}: message {n} has role {m['role']!r}, not one of {', '.join(ROLES)}"
            )
        if not isinstance(m.get("content"), str):
            raise UserError(f"{where}: message {n} ({m['role']}) has no text 'content'")
        if m["role"] == "assistant" and not m["content"].strip():
            raise UserError(f"{where}: message {n} is an empty assistant turn")
    if not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{where}: no assistant message, so nothing to learn from it")
