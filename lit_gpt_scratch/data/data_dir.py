"""The data directory ``prepare`` writes: what it may hold, how it is read and checked, and how
a failed run takes back what it wrote.

    data_dir/  train_NNNNNN.bin, val_NNNNNN.bin   the shards (``shards.py``)
               train_NNNNNN.docs.npy, ...         their document boundaries (``documents.py``)
               meta.json                          written last: the directory is complete
               prepare_state.json                 an unfinished run's checkpoint
               .lock                              held while a prepare writes (``files.FolderLock``)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from lit_gpt_scratch.data.documents import DocumentShardWriter, check_boundaries, is_boundary_file
from lit_gpt_scratch.data.shards import META, SHARD_RE, SPLITS
from lit_gpt_scratch.data.val_split import auto_picks_documents
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.files import LOCK_NAME, FolderLock, is_temporary, write_atomic

log = logging.getLogger(__name__)

STATE = "prepare_state.json"


def already_prepared(out: Path, meta: dict, settings: dict, block_size: int) -> dict:
    refuse_if_changed(out, _with_val_split(meta["settings"], settings, meta, block_size), settings)
    check_complete(out, meta, block_size)
    for name in (STATE, LOCK_NAME):  # left if killed between meta.json and cleanup
        if (out / name).exists():
            with contextlib.suppress(OSError):  # e.g. a read-only mount: harmless, meta.json rules
                (out / name).unlink()
    log.info("%s is already prepared with these settings: nothing to do", out)
    return meta


def roll_back_to_checkpoint(out: Path, shard_tokens: int, dtype, eot_id: int) -> None:
    """Cut the shards back to the last checkpoint on disk, as a rerun would, and drop the
    temporary files written since."""
    state = read_json(out / STATE)
    remove_stale_json_temporaries(out)
    if state is None:
        return
    for split in SPLITS:
        writer = DocumentShardWriter(out, split, shard_tokens, dtype, eot_id)
        writer.resume_at(state["tokens"][split])
        writer.close()


def refuse_if_other_run(out: Path, run_settings: dict) -> dict | None:
    """The checkpoint of an interrupted run, refused if it was made with other settings."""
    state = read_json(out / STATE)
    if state is not None:
        refuse_if_changed(out, _with_val_split(state["settings"], run_settings), run_settings)
    return state


def _with_val_split(before: dict, now: dict, meta: dict | None = None, block_size: int = 0):
    """Settings from before ``val_split`` existed, as they would read today: made by whole
    documents, which is also what ``auto`` asks for where it would have picked them (a
    complete directory's counts tell; an interrupted run's do not yet)."""
    if "val_split" in before or "val_split" not in now:
        return before
    auto = (
        now["val_split"] == "auto"
        and meta is not None
        and auto_picks_documents(meta, now["val_fraction"], block_size)
    )
    return {**before, "val_split": "auto" if auto else "documents"}


def write_json(path: Path, obj: dict) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(
            f"{path}: unreadable ({e}); delete {path.parent} and prepare again"
        ) from None


def _own_file(name: str) -> bool:
    return (
        bool(SHARD_RE.match(name))
        or is_boundary_file(name)
        or _is_json_temporary(name)
        or name
        in (
            META,
            STATE,
            LOCK_NAME,  # left by a killed run; a finished one removes it
        )
    )


def _is_json_temporary(name: str) -> bool:
    """A temporary file of ``write_json`` (``.meta.json.<pid>.tmp``)."""
    return is_temporary(Path(name)) and name.startswith((f".{META}.", f".{STATE}."))


def _json_temporaries(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if _is_json_temporary(p.name)] if out.is_dir() else []


def remove_stale_json_temporaries(out: Path) -> None:
    """Remove the ``.meta.json.<pid>.tmp`` / ``.prepare_state.json.<pid>.tmp`` files a prepare
    killed inside ``write_json`` left (call it holding the data_dir lock): they are never
    read, and a finished directory must hold exactly what an uninterrupted run writes."""
    for tmp in _json_temporaries(out):
        tmp.unlink(missing_ok=True)


def refuse_foreign_files(out: Path) -> None:
    foreign = sorted(n for n in os.listdir(out) if not _own_file(n)) if out.exists() else []
    if foreign:
        raise UserError(
            f"data_dir {out} holds files prepare did not write (e.g. {foreign[0]}): "
            "choose an empty or new directory"
        )


def remove_outputs(out: Path, remove_dir: bool, lock: FolderLock | None = None) -> None:
    """Remove what prepare wrote; the lock file only with ``lock``, held by this process."""
    if out.is_dir():
        for name in os.listdir(out):
            if _own_file(name) and (name != LOCK_NAME or lock is not None):
                (out / name).unlink()
    if remove_dir and out.is_dir() and not os.listdir(out):
        out.rmdir()


def refuse_if_changed(out: Path, before: dict, now: dict) -> None:
    changed = [k for k in now if before.get(k) != now[k]]
    if not changed:
        return
    key = changed[0]
    if key == "manifest":
        what = "the source files changed (size or modification time) since"
    else:
        what = f"{key} was {_shown(before.get(key))}, now {_shown(now[key])}"
    raise UserError(
        f"data_dir {out} was prepared with other settings ({what}): use another "
        f"--data.data_dir, or delete {out} to prepare it again"
    )


def _shown(value) -> str:
    # A ranks file's identity is its digest: say so rather than print 64 hex digits.
    if isinstance(value, str) and value.startswith("sha256:"):
        return f"the ranks file with sha256 {value[7:19]}…"
    return repr(value)


def check_complete(out: Path, meta: dict, block_size: int) -> None:
    itemsize = np.dtype(meta["dtype"]).itemsize
    for shards in meta["splits"].values():
        for shard in shards:
            path = out / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["tokens"] * itemsize:
                raise UserError(
                    f"{path} is missing or has the wrong size for meta.json: "
                    f"delete {out} and prepare again"
                )
    check_boundaries(out, meta)  # none listed in a directory prepared before they existed
    if meta["tokens"]["train"] < block_size + 1:
        raise UserError(
            f"{out} holds {meta['tokens']['train']} train tokens, fewer than one window of "
            f"block_size + 1 = {block_size + 1}"
        )


def corpus_fingerprint(meta: dict) -> str:
    """What tells one corpus from another: a sha256 of meta.json's description of the token
    files (tokenizer, shards and their lengths, the sources' manifest and the split
    settings), leaving out paths, so that a moved or copied ``data_dir`` is the same corpus."""
    settings = {k: v for k, v in meta.get("settings", {}).items() if k != "sources"}
    described = {
        **{k: meta.get(k) for k in ("tokenizer", "vocab_size", "dtype", "splits", "tokens")},
        "documents": meta.get("documents"),
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
