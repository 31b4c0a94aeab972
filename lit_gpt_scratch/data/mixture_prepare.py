"""``prepare`` of a mixture: each source prepared apart, then a top-level ``meta.json``.

    data_dir/  meta.json        the mixture's manifest, written last: the directory is complete
               .lock            held while a prepare writes
               <name>/          one source, prepared by ``prepare`` itself: shards + meta.json

Every source gets the same tokenizer, ``val_fraction``, ``val_split`` and ``shard_tokens``;
each keeps ``prepare``'s guarantees in its own folder (deterministic, atomic, resumable after a
kill, verified no-op when complete, refused when its settings changed). The manifest records
the sources (names and paths) and their token counts, never their weights: a weight is a
sampling choice, and changing it prepares nothing again.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from lit_gpt_scratch.data.data_dir import read_json, refuse_if_changed, write_json
from lit_gpt_scratch.data.mixture import MixEntry
from lit_gpt_scratch.data.shards import META, refuse_file_as_data_dir
from lit_gpt_scratch.data.sources import (
    normalize_source,
    plan_sources,
    refuse_data_dir_in_sources,
)
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.files import LOCK_NAME, FolderLock, is_temporary
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

log = logging.getLogger(__name__)

MIXTURE_FORMAT_VERSION = 1


def prepare_mixture(entries: list[MixEntry], prepare_one, options: dict) -> dict:
    """Prepare each of ``entries`` into ``data_dir/<name>/`` with ``prepare_one`` (``prepare``,
    called with ``options`` and that source alone), then write the manifest; return it."""
    out = Path(options["data_dir"])
    refuse_file_as_data_dir(out)
    refuse_data_dir_in_sources(out, [e.path for e in entries])
    tok = load_tokenizer(options["tokenizer"])
    settings = {
        "format_version": MIXTURE_FORMAT_VERSION,
        "tokenizer": tok.identity,
        "sources": [{"name": e.name, "path": normalize_source(e.path)} for e in entries],
        **{k: options[k] for k in ("val_fraction", "val_split", "shard_tokens", "text_field")},
    }

    def one(entry: MixEntry) -> dict:
        where = str(out / entry.name)
        try:
            return prepare_one(**{**options, "sources": [entry.path], "data_dir": where})
        except UserError as e:  # "the corpus is empty": which source's corpus
            raise type(e)(f"data.sources {entry.name!r}: {e}") from None

    meta = read_json(out / META)
    if meta is not None:
        return _verified(out, meta, settings, entries, one)
    _refuse_foreign_files(out, entries)
    # Every path checked, and no file reached by two sources (its documents would be in the
    # val split of one and the train split of the other), before any source is prepared.
    plan_sources([e.path for e in entries], options["text_field"])
    created = not out.exists()
    lock = FolderLock(out, f"data_dir {out}")
    lock.acquire()
    try:
        meta = read_json(out / META)
        if meta is not None:  # another prepare completed it just before we took the lock
            lock.remove_and_release()
            return _verified(out, meta, settings, entries, one)
        started = [e for e in entries if not (out / e.name).exists()]
        try:
            metas = {e.name: one(e) for e in entries}
        except UserError:  # bad input: take back the sources this run started, and the folder
            for entry in started:
                shutil.rmtree(out / entry.name, ignore_errors=True)
            if created and not [n for n in os.listdir(out) if n != LOCK_NAME]:
                lock.remove_and_release()
                out.rmdir()
            raise
        meta = _manifest(entries, metas, settings)
        write_json(out / META, meta)  # the mixture is complete from here on
        lock.remove_and_release()
        _report(out, meta)
        return meta
    finally:
        lock.release()


def _manifest(entries: list[MixEntry], metas: dict[str, dict], settings: dict) -> dict:
    first = metas[entries[0].name]
    return {
        "format_version": settings["format_version"],
        "mixture": [
            {
                "name": e.name,
                "path": source["path"],
                "tokens": metas[e.name]["tokens"],
                "documents": metas[e.name]["documents"],
                "val_split": metas[e.name]["val_split"],
            }
            for e, source in zip(entries, settings["sources"], strict=True)
        ],
        **{k: first[k] for k in ("tokenizer", "vocab_size", "eot_id", "dtype")},
        "tokens": {
            split: sum(metas[e.name]["tokens"][split] for e in entries)
            for split in ("train", "val")
        },
        "settings": settings,
    }


def _verified(out: Path, meta: dict, settings: dict, entries: list[MixEntry], one) -> dict:
    """A complete mixture: refused unless made from these sources and settings; each source's
    folder verified as ``prepare`` verifies a complete directory (a no-op)."""
    if "mixture" not in meta:
        raise UserError(
            f"data_dir {out} holds one corpus prepared from a plain list of data.sources, not "
            "a mixture: use another --data.data_dir for the mixture"
        )
    refuse_if_changed(out, meta["settings"], settings)
    for entry, recorded in zip(entries, meta["mixture"], strict=True):
        if not (out / entry.name / META).is_file():
            raise UserError(f"{out / entry.name / META} is missing: delete {out} and prepare again")
        if one(entry)["tokens"] != recorded["tokens"]:
            raise UserError(
                f"{out / entry.name} does not hold the tokens {out / META} records: delete "
                f"{out} and prepare again"
            )
    log.info("mixture %s is already prepared with these sources and settings", out)
    return meta


def _refuse_foreign_files(out: Path, entries: list[MixEntry]) -> None:
    """Only the sources' folders, the lock and the manifest (or its temporary) belong here:
    a folder half-prepared as one corpus, or for other sources, is refused."""
    if not out.is_dir():
        return
    own = {META, LOCK_NAME, *(e.name for e in entries)}
    foreign = sorted(
        n
        for n in os.listdir(out)
        if n not in own and not (is_temporary(Path(n)) and n.startswith(f".{META}."))
    )
    if foreign:
        raise UserError(
            f"data_dir {out} holds files a prepare of these sources did not write (e.g. "
            f"{foreign[0]}): choose an empty or new directory for the mixture"
        )


def _report(out: Path, meta: dict) -> None:
    log.info(
        "prepared mixture %s: %d sources, train %s tokens, val %s tokens",
        out,
        len(meta["mixture"]),
        f"{meta['tokens']['train']:,}",
        f"{meta['tokens']['val']:,}",
    )
    for source in meta["mixture"]:
        log.info(
            "  %s: train %s tokens, val %s tokens (%s)",
            source["name"],
            f"{source['tokens']['train']:,}",
            f"{source['tokens']['val']:,}",
            source["path"],
        )
