"""Weighted source mixtures: ``data.sources`` entries of the form ``{path, weight, name}``.

    data.sources ─► read_mixture ─► None (a plain list of strings: one corpus, as always)
                                └─► [MixEntry(name, path, weight), ...] (a mixture)

A list of plain strings is one corpus, prepared into ``data_dir`` itself. As soon as one entry
is a mapping, the list is a mixture: each source is prepared apart into ``data_dir/<name>/``
and training draws windows from the sources in proportion to their weights (in tokens drawn:
every window has ``block_size + 1`` tokens). A bare string in a mixture has weight 1 and the
name derived from its path (``corpus/`` -> ``corpus``, ``more.jsonl`` -> ``more``,
``stdlib`` -> ``stdlib``, ``hf:org/set`` -> ``set``); a source whose name cannot be derived
(a glob) needs ``name``. Names become metric keys (``val/<name>/loss``) and folder names:
letters, digits, ``_`` and ``-``, distinct (ignoring case).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Required, TypedDict

from lit_gpt_scratch.data.sources import GLOB_CHARS, HF_PREFIX
from lit_gpt_scratch.errors import UserError

# A name is a key in logged metric names (val/<name>/loss) and a folder name: no / or .
NAME = re.compile(r"[A-Za-z0-9_-]+")


class MixSource(TypedDict, total=False):
    """One source of a mixture.

    Args:
        path: The source, as a plain ``data.sources`` entry: ``stdlib``, a file, a directory,
            a glob, ``.jsonl``, ``.parquet`` or ``hf:<dataset>``.
        weight: Share of the windows drawn from it (tokens drawn), relative to the others'.
            Default 1.
        name: Its folder under ``data_dir`` and its metric names (``val/<name>/loss``).
            Default: derived from ``path``.
    """

    path: Required[str]
    weight: float
    name: str


@dataclass(frozen=True)
class MixEntry:
    """A checked mixture source."""

    name: str
    path: str
    weight: float


def is_mixture(sources) -> bool:
    return any(not isinstance(s, str) for s in sources)


def read_mixture(sources) -> list[MixEntry] | None:
    """The mixture ``sources`` describe, checked (one-line ``UserError`` naming the entry), or
    None for a plain list of strings (read as one corpus, exactly as before mixtures)."""
    for source in sources:
        if isinstance(source, str) and _looks_like_a_mapping(source):
            raise UserError(
                f"data.sources: {source!r} is not a source: a mapping entry takes the keys "
                "path (required), weight (a number above 0) and name only"
            )
    if not is_mixture(sources):
        return None
    entries = [_entry(i, s) for i, s in enumerate(sources)]
    seen: dict[str, MixEntry] = {}
    for entry in entries:
        other = seen.setdefault(entry.name.lower(), entry)
        if other is not entry:
            raise UserError(
                f"data.sources: {other.path!r} and {entry.path!r} are both named "
                f"{entry.name!r}: give them distinct names (name: ...)"
            )
    return entries


def weights_of(entries: list[MixEntry]) -> dict[str, float]:
    return {e.name: e.weight for e in entries}


def refuse_val_set_names(entries: list[MixEntry] | None, val_sets: dict | None) -> None:
    """A source and a named val set of one name would log the same ``val/<name>/loss``."""
    for entry in entries or []:
        if entry.name in (val_sets or {}):
            raise UserError(
                f"data.sources: source name {entry.name!r} is also a data.val_sets name: both "
                f"would log val/{entry.name}/loss; rename one"
            )


def _entry(index: int, source) -> MixEntry:
    key = f"data.sources[{index}]"
    if isinstance(source, str):
        return MixEntry(_derived_name(key, source), source, 1.0)
    if hasattr(source, "as_dict"):  # a jsonargparse Namespace
        source = source.as_dict()
    if not isinstance(source, dict):
        raise UserError(f"{key}: {source!r} is neither a path nor a {{path, weight, name}} mapping")
    unknown = sorted(set(source) - {"path", "weight", "name"})
    if unknown:
        raise UserError(f"{key}: unknown key {unknown[0]!r}: a source takes path, weight and name")
    path = source.get("path")
    if not isinstance(path, str) or not path:
        raise UserError(f"{key}: path is missing: write {{path: <source>, weight: ..., name: ...}}")
    weight = source.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise UserError(f"{key}.weight must be a number, got {weight!r}")
    if not math.isfinite(weight) or weight <= 0:
        raise UserError(f"{key}.weight must be a finite number above 0, got {weight}")
    name = source.get("name")
    if name is None:
        name = _derived_name(key, path)
    elif not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserError(
            f"{key}.name {name!r}: a name must be letters, digits, _ and - only (it names the "
            "folder data_dir/<name> and the metrics val/<name>/loss and val/<name>/bpb)"
        )
    return MixEntry(name, path, float(weight))


def _derived_name(key: str, path: str) -> str:
    if path.startswith(HF_PREFIX):
        base = path[len(HF_PREFIX) :].partition("?")[0].rstrip("/").rsplit("/", 1)[-1]
    elif any(c in path for c in GLOB_CHARS):
        base = ""
    else:
        base = os.path.basename(os.path.normpath(os.path.expanduser(path)))
        stem, ext = os.path.splitext(base)
        base = stem if stem and ext else base
    if not NAME.fullmatch(base):
        raise UserError(
            f"{key}: cannot name source {path!r} after its path (a name is letters, digits, _ "
            f"and - only): write it as {{path: {path}, name: <name>}}"
        )
    return base


def _looks_like_a_mapping(source: str) -> bool:
    """A command-line list whose mapping jsonargparse could not read arrives as one string."""
    text = source.strip()
    return text.startswith("{") or (text.startswith("[") and "{" in text)
