"""An offline preference set from the running Python's standard library.

Each pair asks what a stdlib function does, the way the ``stdlib-chat`` set asks it; the
chosen reply is the first line of that function's docstring, the rejected reply the first
line of another function's (of the function half the set further on, so every rejected reply
is a real docstring line, only a wrong one):

    {"prompt": "What does `json.dumps` do?", "chosen": "Serialize ``obj`` to a JSON ...",
     "rejected": "Return the canonical path of the specified filename, ..."}

A chat model fine-tuned on ``stdlib-chat`` has seen the right answers; DPO teaches it to
prefer them over fluent wrong ones. Every machine with Python builds it; the held-out split
is chosen by a hash of each function's name, the same on every machine with the same Python.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from lit_gpt_scratch.data.stdlib_chat import stdlib_conversations
from lit_gpt_scratch.errors import UserError, check_at_least, check_in
from lit_gpt_scratch.files import write_atomic

QUESTION = "What does `"  # the stdlib-chat question whose answer is a docstring


def docstring_answers(max_pairs: int) -> list[tuple[str, str]]:
    """(question, the first line of the docstring) of the first ``max_pairs`` documented
    stdlib functions, in the set's fixed order; each first line appears once."""
    found, seen = [], set()
    for _, messages in stdlib_conversations():
        question, answer = messages[0]["content"], messages[1]["content"]
        if not question.startswith(QUESTION):
            continue
        first_line = answer.strip().splitlines()[0].strip()
        if len(first_line) < 8 or first_line in seen:  # too short to tell apart, or a repeat
            continue
        seen.add(first_line)
        found.append((question, first_line))
        if len(found) == max_pairs:
            break
    return found


def preference_set(out: str, max_pairs: int = 2000, val_percent: int = 10) -> None:
    """Write a preference set from the standard library: ``out/train.jsonl`` and
    ``out/val.jsonl`` of ``{prompt, chosen, rejected}`` records, the chosen reply a
    function's docstring line, the rejected one another function's
    (``configs/dpo-tiny.yaml`` trains on it).

    Args:
        out: Folder to write into (made if missing; the two files are replaced whole).
        max_pairs: Pairs at most (the first documented functions in the set's order).
        val_percent: Share of the pairs held out for ``val.jsonl``, by a hash of the question.
    """
    check_at_least("max_pairs", max_pairs, 2)
    check_in("val_percent", val_percent, 1, 99)
    answers = docstring_answers(max_pairs)
    if len(answers) < 2:
        raise UserError("this Python's standard library has too few documented functions")
    half = len(answers) // 2
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for i, (question, chosen) in enumerate(answers):
        rejected = answers[(i + half) % len(answers)][1]
        record = {"prompt": question, "chosen": chosen, "rejected": rejected}
        held_out = zlib.crc32(question.encode()) % 100 < val_percent
        splits["val" if held_out else "train"].append(json.dumps(record, ensure_ascii=False))
    if not splits["val"] or not splits["train"]:
        raise UserError(f"max_pairs {max_pairs} is too few to hold out val_percent {val_percent}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        write_atomic(folder / f"{split}.jsonl", "".join(f"{r}\n" for r in records))
    print(f"wrote {len(splits['train'])} train and {len(splits['val'])} val pairs to {folder}")
