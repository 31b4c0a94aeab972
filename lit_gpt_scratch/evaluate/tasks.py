"""Downstream tasks read from their published files, one JSON object a line.

Every task becomes a list of ``Item``s: the (context, continuation) requests a model scores,
and which one is right. Prompts follow lm-evaluation-harness (0.4), so scores compare with
published ones:

- ``hellaswag``: ``activity_label: ctx_a Ctx_b`` then each ending, WikiHow's ``[title]`` /
  ``[header]`` artefacts cleaned as the harness does.
- ``arc_easy`` / ``arc_challenge``: ``Question: ...\\nAnswer:`` then each choice's text.
- ``piqa``: ``Question: <goal>\\nAnswer:`` then ``sol1`` / ``sol2``.
- ``winogrande``: the sentence up to the blank with each option filled in, then the same rest
  of the sentence (partial scoring): accuracy only.
- ``lambada``: the passage without its last word, then the last word (accuracy: greedy
  decoding gives the word; perplexity).
- a task of your own, in one of two generic forms: multiple choice
  ``{"context", "choices", "answer"}`` or cloze ``{"context", "continuation"}``.

A choice or continuation follows its context after one space (the harness's
``target_delimiter``). ``acc_norm`` divides a choice's log-likelihood by its length in
characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lit_gpt_scratch.errors import UserError, one_line

HF_PREFIX = "hf:"
GENERIC = "generic"  # a task of the user's own: its form read from its first line


@dataclass(frozen=True)
class Item:
    """One question: a (context, continuation) request per choice (one for a cloze item)."""

    requests: tuple[tuple[str, str], ...]
    answer: int  # the index of the right request (0 for cloze)
    lengths: tuple[int, ...]  # each choice's length in characters: acc_norm's divisor
    where: str  # "<file> line N": names the item in errors


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "choice" (pick the likeliest) or "cloze" (is the continuation the greedy one)
    metrics: tuple[str, ...]
    items: tuple[Item, ...]
    source: str


@dataclass(frozen=True)
class Format:
    read: Callable[[dict], Item]  # a record -> Item (``where`` filled in later)
    kind: str
    metrics: tuple[str, ...]
    hf: str  # the Hugging Face dataset the harness reads
    files: str  # where the published file comes from, for the docs and the missing-file error


class Malformed(ValueError):
    """A record that is not of its task's form (the message says what is wrong)."""


def _choice(context: str, choices: list[str], answer: int) -> Item:
    if len(choices) < 2:
        raise Malformed(f"has {len(choices)} choice(s); a question needs at least 2")
    if not 0 <= answer < len(choices):
        raise Malformed(f"answer {answer} is not an index of its {len(choices)} choices")
    requests = tuple((context, " " + choice) for choice in choices)
    return Item(requests, answer, tuple(len(c) for c in choices), "")


def _cloze(context: str, continuation: str) -> Item:
    if not continuation:
        raise Malformed("has an empty continuation")
    return Item(((context, " " + continuation),), 0, (len(continuation),), "")


def _field(record: dict, key: str, kind: type | tuple[type, ...] = str):
    if key not in record:
        raise Malformed(f"has no field {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise Malformed(f"field {key!r} is {type(value).__name__}, not {names}")
    return value


def _strings(record: dict, key: str) -> list[str]:
    values = _field(record, key, list)
    if not all(isinstance(v, str) for v in values):
        raise Malformed(f"field {key!r} is not a list of strings")
    return values


def _index(record: dict, key: str) -> int:
    value = _field(record, key, (int, str))
    try:
        return int(value)
    except ValueError:
        raise Malformed(f"field {key!r} is {value!r}, not an index") from None


def hellaswag_text(text: str) -> str:
    """HellaSwag's text as the harness cleans it: WikiHow's bracketed markers removed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag(record: dict) -> Item:
    context = _field(record, "ctx_a") + " " + _field(record, "ctx_b").capitalize()
    query = hellaswag_text(_field(record, "activity_label") + ": " + context)
    endings = [hellaswag_text(e) for e in _strings(record, "endings")]
    return _choice(query, endings, _index(record, "label"))


def arc(record: dict) -> Item:
    question = _field(record, "question", (str, dict))
    if isinstance(question, dict):  # AI2's own files: {"stem", "choices": [{"text", "label"}]}
        stem = _field(question, "stem")
        choices = _field(question, "choices", list)
        if not all(isinstance(c, dict) for c in choices):
            raise Malformed("field 'question.choices' is not a list of objects")
        texts = [_field(c, "text") for c in choices]
        labels = [_field(c, "label") for c in choices]
    else:  # the Hugging Face rows: {"question", "choices": {"text": [...], "label": [...]}}
        stem = question
        texts = _strings(_field(record, "choices", dict), "text")
        labels = _strings(record["choices"], "label")
    key = _field(record, "answerKey")
    if key not in labels:
        raise Malformed(f"answerKey {key!r} is not one of the labels {labels}")
    return _choice(f"Question: {stem}\nAnswer:", texts, labels.index(key))


def piqa(record: dict) -> Item:
    goal = _field(record, "goal")
    return _choice(
        f"Question: {goal}\nAnswer:",
        [_field(record, "sol1"), _field(record, "sol2")],
        _index(record, "label"),
    )


def winogrande(record: dict) -> Item:
    sentence = _field(record, "sentence")
    if "_" not in sentence:
        raise Malformed("field 'sentence' has no blank '_'")
    blank = sentence.index("_")
    options = [_field(record, "option1"), _field(record, "option2")]
    answer = _field(record, "answer", (str, int))
    if str(answer) not in ("1", "2"):
        raise Malformed(f"field 'answer' is {answer!r}, not '1' or '2'")
    rest = " " + sentence[blank + 1 :].strip()
    requests = tuple((sentence[:blank] + option, rest) for option in options)
    return Item(requests, int(answer) - 1, (len(rest),) * 2, "")


def lambada(record: dict) -> Item:
    words = _field(record, "text").split(" ")
    if len(words) < 2:
        raise Malformed("field 'text' has fewer than 2 words")
    return _cloze(" ".join(words[:-1]), words[-1])


def multiple_choice(record: dict) -> Item:
    return _choice(
        _field(record, "context"), _strings(record, "choices"), _field(record, "answer", int)
    )


def cloze(record: dict) -> Item:
    return _cloze(_field(record, "context"), _field(record, "continuation"))


CHOICE, CLOZE = "choice", "cloze"
NAMED: dict[str, Format] = {
    "hellaswag": Format(
        hellaswag, CHOICE, ("acc", "acc_norm"), "hf:Rowan/hellaswag?split=validation",
        "hellaswag_val.jsonl from github.com/rowanz/hellaswag (data/)",
    ),
    "arc_easy": Format(
        arc, CHOICE, ("acc", "acc_norm"), "hf:allenai/ai2_arc?name=ARC-Easy&split=test",
        "ARC-Easy-Test.jsonl from AI2's ARC-V1 archive (allenai.org/data/arc)",
    ),
    "arc_challenge": Format(
        arc, CHOICE, ("acc", "acc_norm"), "hf:allenai/ai2_arc?name=ARC-Challenge&split=test",
        "ARC-Challenge-Test.jsonl from AI2's ARC-V1 archive (allenai.org/data/arc)",
    ),
    "piqa": Format(
        piqa, CHOICE, ("acc", "acc_norm"), "hf:baber/piqa?split=validation",
        "valid.jsonl + valid-labels.lst from yonatanbisk.com/piqa (as piqa.jsonl + "
        "piqa-labels.lst)",
    ),
    "winogrande": Format(
        winogrande, CHOICE, ("acc",),
        "hf:allenai/winogrande?name=winogrande_xl&split=validation",
        "dev.jsonl from the WinoGrande 1.1 archive (winogrande.allenai.org)",
    ),
    "lambada": Format(
        lambada, CLOZE, ("acc", "ppl"), "hf:EleutherAI/lambada_openai?name=default&split=test",
        "lambada_test.jsonl, OpenAI's LAMBADA (the harness's lambada_openai)",
    ),
}  # fmt: skip
GENERIC_FORMS = {
    "choices": Format(multiple_choice, CHOICE, ("acc", "acc_norm"), "", ""),
    "continuation": Format(cloze, CLOZE, ("acc", "ppl"), "", ""),
}


def parse_task_list(tasks: str | list[str]) -> list[tuple[str, str | None]]:
    """``"hellaswag,mine=path/x.jsonl"`` (or a list of entries) -> [(name, source or None)]."""
    entries = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    parsed = []
    for entry in (e.strip() for e in entries):
        name, _, source = entry.partition("=")
        if not name:
            raise UserError(f"--tasks entry {entry!r} names no task (expected NAME or NAME=FILE)")
        if name in (n for n, _ in parsed):
            raise UserError(f"--tasks names {name} twice")
        parsed.append((name, source or None))
    if not parsed:
        raise UserError("--tasks is empty: name at least one task")
    return parsed


def task_source(name: str, source: str | None, task_dir: str | None) -> str:
    """Where task ``name`` is read from: its own ``source``, ``task_dir/<name>.jsonl``, or with
    ``task_dir`` hf the Hugging Face dataset the harness reads."""
    if source:
        return source
    if task_dir == "hf":
        if name not in NAMED:
            raise UserError(
                f"task {name}: no Hugging Face dataset is known for it: give {name}=FILE"
            )
        return NAMED[name].hf
    if name not in NAMED and not (task_dir and (Path(task_dir) / f"{name}.jsonl").is_file()):
        where = f"{task_dir}/{name}.jsonl" if task_dir else f"{name}=FILE"
        raise UserError(
            f"unknown task {name!r}: the named tasks are {', '.join(NAMED)}; a task of your own "
            f"needs {where} in a generic form ({{context, choices, answer}} or "
            "{context, continuation})"
        )
    if task_dir is None:
        raise UserError(f"task {name}: give --task_dir DIR (holding {name}.jsonl) or {name}=FILE")
    path = Path(task_dir) / f"{name}.jsonl"
    if not path.is_file():
        raise UserError(
            f"task {name}: {path} does not exist (the published file: {NAMED[name].files})"
        )
    return str(path)


def load_task(name: str, source: str, limit: int | None = None) -> Task:
    """Task ``name`` read from ``source`` (a .jsonl file or ``hf:ID?...``), its first ``limit``
    items only when given. Bad records are UserErrors naming the file and line."""
    fmt = NAMED.get(name)
    items: list[Item] = []
    labels = _piqa_labels(source) if name == "piqa" else None
    for where, record in _records(name, source):
        if limit is not None and len(items) >= limit:
            break
        if fmt is None:  # a generic task: its form is the first record's
            fmt = next((f for key, f in GENERIC_FORMS.items() if key in record), None)
            if fmt is None:
                raise UserError(
                    f"task {name}: {where} is neither generic form: expected "
                    "{context, choices, answer} or {context, continuation}"
                )
        if labels is not None and "label" not in record:
            record = {**record, "label": labels[len(items)] if len(items) < len(labels) else None}
        try:
            item = fmt.read(record)
        except Malformed as e:
            raise UserError(f"task {name}: {where} {e}") from None
        items.append(Item(item.requests, item.answer, item.lengths, where))
    if not items:
        raise UserError(f"task {name}: {source} holds no items")
    return Task(name, fmt.kind, fmt.metrics, tuple(items), source)


def load_tasks(tasks: str | list[str], task_dir: str | None, limit: int | None) -> list[Task]:
    """Every task of a ``--tasks`` list, read and checked before any is scored."""
    entries = parse_task_list(tasks)
    sources = [(name, task_source(name, source, task_dir)) for name, source in entries]
    return [load_task(name, source, limit) for name, source in sources]


def _records(name: str, source: str) -> Iterator[tuple[str, dict]]:
    if source.startswith(HF_PREFIX):
        yield from _hf_records(name, source)
        return
    path = Path(source)
    if not path.is_file():
        raise UserError(f"task {name}: {source} does not exist")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"task {name}: {where} is not JSON ({one_line(e)})") from None
            if not isinstance(record, dict):
                raise UserError(f"task {name}: {where} is not a JSON object")
            yield where, record


def _hf_records(name: str, source: str) -> Iterator[tuple[str, dict]]:
    from lit_gpt_scratch.data.sources import open_hf_stream

    dataset_id, rows = open_hf_stream(source, f"task {name}: {source}", "validation")
    for n, record in enumerate(rows):
        yield f"{dataset_id} record {n}", dict(record)


def _piqa_labels(source: str) -> list[int] | None:
    """PIQA's published answers sit beside the questions: ``piqa-labels.lst``, one a line."""
    if source.startswith(HF_PREFIX):
        return None
    path = Path(source)
    labels = path.with_name(path.stem + "-labels.lst")
    if not labels.is_file():
        return None
    return [int(x) for x in labels.read_text().split()]
