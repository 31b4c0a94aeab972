"""``prepare`` for ``data.format: chat``: conversations into packed windows of ids plus a mask.

    sources ─► conversations (checked) ─► template: ids + target mask ─► val by conversation
            ─► best-fit packing into windows of block_size + 1 ─► shards ─► meta.json (last)

    data_dir/  train_NNNNNN.bin, val_NNNNNN.bin            the windows' ids, one after another
               train-mask_NNNNNN.bin, val-mask_NNNNNN.bin  uint8, 1 where the token is a target
               meta.json                                   counts, settings; written last

Every window is exactly ``block_size + 1`` tokens: whole conversations (each beginning with
``<|endoftext|>``, so the GPT's document mask keeps them apart), then ``<|endoftext|>`` padding
that is never a target. With ``pack: false`` a window holds one conversation (for a model
without the document mask). A conversation longer than a window is cut to the window
(``overlong: truncate``; one left with no target in it is dropped) or dropped (``skip``);
both are counted in the summary line and in meta.json. Conversation ``i`` is held out for
validation when ``i % n == n - 1``, ``n = round(1 / val_fraction)``.

Deterministic: the same sources and settings give byte-identical files. Atomic: meta.json is
written last, so a directory is complete or is not used; bad input leaves nothing behind, and
a rerun after a kill, which finds no meta.json, removes what the killed run wrote and prepares
again from the start (conversation sets are small: seconds). One prepare at a time (the
``data_dir`` lock); a complete directory with the same settings is used as it is.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from lit_gpt_scratch.data.chat_sources import conversations, manifest
from lit_gpt_scratch.data.chat_template import ChatTemplate
from lit_gpt_scratch.data.data_dir import read_json, refuse_if_changed, write_json
from lit_gpt_scratch.data.packing import best_fit
from lit_gpt_scratch.data.shards import META, ShardWriter, refuse_file_as_data_dir
from lit_gpt_scratch.errors import UserError, check_at_least
from lit_gpt_scratch.files import LOCK_NAME, FolderLock
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MASK = "-mask"  # the mask shards of split s are named like the shards of split s + MASK
OWN_FILE = re.compile(r"^(train|val)(-mask)?_\d{6}\.bin(\.tmp)?$")


def prepare_chat(
    sources: list[str],
    tokenizer: str,
    data_dir: str,
    val_fraction: float,
    block_size: int,
    shard_tokens: int,
    overlong: str = "truncate",
    pack: bool = True,
    progress: bool = True,
) -> dict:
    """Render, split, pack and write the conversations of ``sources``; return meta.json's dict."""
    check_at_least("data.block_size", block_size, 1)
    check_at_least("data.shard_tokens", shard_tokens, 1)
    if not 0 < val_fraction <= 0.5:
        raise UserError(f"data.val_fraction must be in (0, 0.5], got {val_fraction}")
    tok = load_tokenizer(tokenizer)
    template = ChatTemplate(tok)  # refuses a tokenizer without the chat tokens
    out = Path(data_dir)
    refuse_file_as_data_dir(out)
    settings = {
        "format": "chat",
        "format_version": FORMAT_VERSION,
        "tokenizer": tok.identity,
        "sources": list(sources),
        "manifest": manifest(sources),
        "val_fraction": val_fraction,
        "block_size": block_size,
        "shard_tokens": shard_tokens,
        "overlong": overlong,
        "pack": pack,
    }
    meta = read_json(out / META)
    if meta is not None:
        return _already_prepared(out, meta, settings)
    _refuse_foreign_files(out)
    created = not out.exists()
    lock = FolderLock(out, f"data_dir {out}")
    lock.acquire()
    try:
        meta = read_json(out / META)
        if meta is not None:  # another prepare finished it while we waited for the lock
            return _already_prepared(out, meta, settings)
        _remove_outputs(out)  # a killed run's files: this run starts over
        try:
            meta = _write(out, tok, template, settings)
        except BaseException:
            _remove_outputs(out)
            if created:
                lock.remove_and_release()
                out.rmdir()
            raise
        lock.remove_and_release()
        _report(out, meta)
        return meta
    finally:
        lock.release()


def _write(out: Path, tok, template: ChatTemplate, settings: dict) -> dict:
    window = settings["block_size"] + 1
    rendered: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "val": []}
    counts = {"conversations": 0, "truncated": 0, "skipped": 0}
    for i, (_, messages) in enumerate(conversations(settings["sources"])):
        counts["conversations"] += 1
        ids, mask = template.render(messages)
        if len(ids) > window:
            if settings["overlong"] == "skip" or not mask[:window].any():
                counts["skipped"] += 1
                continue
            ids, mask = ids[:window], mask[:window]
            counts["truncated"] += 1
        rendered["val" if is_held_out(i, settings["val_fraction"]) else "train"].append((ids, mask))
    if counts["conversations"] == 0:
        raise UserError(f"the sources {settings['sources']} hold no conversation")
    splits, masks, tokens, windows, targets = {}, {}, {}, {}, {}
    for split, items in rendered.items():
        if not items:
            raise UserError(
                f"the {split} split holds no conversation that fits a window of block_size + 1 "
                f"= {window} ({counts['skipped']} skipped): "
                + ("raise data.val_fraction or add conversations" if split == "val" else
                   "add conversations, raise block_size, or set data.overlong: truncate")
            )  # fmt: skip
        lengths = [len(ids) for ids, _ in items]
        bins = best_fit(lengths, window) if settings["pack"] else [[k] for k in range(len(items))]
        id_writer = ShardWriter(out, split, settings["shard_tokens"], tok.dtype)
        mask_writer = ShardWriter(out, split + MASK, settings["shard_tokens"], np.uint8)
        try:
            for members in bins:
                ids = np.full(window, tok.eot_id, dtype=np.int64)  # EOT padding
                mask = np.zeros(window, dtype=np.uint8)
                at = 0
                for k in members:
                    n = lengths[k]
                    ids[at : at + n], mask[at : at + n] = items[k]
                    at += n
                id_writer.write(ids)
                mask_writer.write(mask)
            splits[split], masks[split] = id_writer.finish(), mask_writer.finish()
        finally:
            id_writer.close()
            mask_writer.close()
        tokens[split], windows[split] = len(bins) * window, len(bins)
        targets[split] = int(sum(mask.sum() for _, mask in items))
        counts[f"{split}_conversations"] = len(items)
    meta = {
        "format": "chat",
        "tokenizer": tok.identity,
        "tokenizer_spec": tok.spec,
        "vocab_size": tok.vocab_size,
        "dtype": tok.dtype.name,
        "eot_id": tok.eot_id,
        "window": window,
        "splits": splits,
        "masks": masks,
        "tokens": tokens,
        "windows": windows,
        "targets": targets,
        "conversations": counts,
        "settings": settings,
    }
    write_json(out / META, meta)  # last: the directory is complete
    return meta


def is_held_out(i: int, val_fraction: float) -> bool:
    """Whether conversation ``i`` (counted from 0 over all sources) is in the val split."""
    every = max(1, round(1 / val_fraction))
    return i % every == every - 1


def _report(out: Path, meta: dict) -> None:
    c, w = meta["conversations"], meta["windows"]
    filled = sum(meta["targets"].values()) / max(1, sum(meta["tokens"].values()))
    log.info(
        "prepared %s: %d conversations (%d train, %d val) in %d + %d windows of %d tokens, "
        "%d truncated, %d skipped as longer than a window; %.0f%% of the tokens are targets",
        out, c["conversations"], c["train_conversations"], c["val_conversations"],
        w["train"], w["val"], meta["window"], c["truncated"], c["skipped"], 100 * filled,
    )  # fmt: skip


def _already_prepared(out: Path, meta: dict, settings: dict) -> dict:
    if meta.get("format") != "chat":
        raise UserError(
            f"data_dir {out} holds text shards, not chat windows: set data.format: text, or "
            "use another data.data_dir"
        )
    refuse_if_changed(out, meta["settings"], settings)
    check_chat_files(out, meta)
    log.info("%s is already prepared with these settings: nothing to do", out)
    return meta


def check_chat_files(out: str | Path, meta: dict) -> None:
    """Every shard listed in meta.json is there, at its listed length."""
    out = Path(out)
    for group, itemsize in (("splits", np.dtype(meta["dtype"]).itemsize), ("masks", 1)):
        for shards in meta[group].values():
            for shard in shards:
                path = out / shard["file"]
                if not path.is_file() or path.stat().st_size != shard["tokens"] * itemsize:
                    raise UserError(
                        f"{path} is missing or has the wrong size for meta.json: "
                        f"delete {out} and prepare again"
                    )


def _refuse_foreign_files(out: Path) -> None:
    if not out.is_dir():
        return
    foreign = sorted(n for n in os.listdir(out) if not (OWN_FILE.match(n) or n == LOCK_NAME))
    if foreign:
        raise UserError(
            f"data_dir {out} holds files prepare did not write (e.g. {foreign[0]}): "
            "choose an empty or new directory"
        )


def _remove_outputs(out: Path) -> None:
    if out.is_dir():
        for name in os.listdir(out):
            if OWN_FILE.match(name) or name.startswith(f".{META}."):
                (out / name).unlink()
