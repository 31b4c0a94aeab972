"""Writing checkpoint files so that a file under a checkpoint's name is always whole.

Lightning's own save (``TorchCheckpointIO`` through fsspec) serializes the whole checkpoint into
memory, writes it to a temporary file in ``$TMPDIR`` and moves that onto the final name. When
``$TMPDIR`` is on another filesystem (a tmpfs ``/tmp``, a node-local scratch disk) the move is a
copy *into* the existing ``last.ckpt``, whose bytes the rotation shares with ``last-1.ckpt``
(a hard link): the copy overwrote both, and a kill during it left neither readable.

Here a checkpoint is streamed through ``files.atomic_write``: into a temporary file beside its
final name, synced to disk and renamed over the name, a new file, never a write through an
existing one. A save that fails (a full disk) removes its temporary file and names the
checkpoint, not a temporary path. A save killed midway leaves its temporary file behind; a
resume removes those (``files.remove_stale``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_gpt_scratch.errors import UserError, one_line
from lit_gpt_scratch.files import atomic_write, remove_quietly, temporary_path


def atomic_torch_save(obj, path: str | Path, label: str = "checkpoint") -> None:
    """``torch.save(obj)`` to ``path``, whole or not at all; UserError "<label> <path>: <why>"."""
    path = Path(path)
    _check_folder_possible(path, label)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as file:
            torch.save(obj, file)  # streamed: no second copy of the checkpoint in memory
    except BaseException as e:
        cause = _os_error(e)
        if cause is not None:  # the machine's (a full disk, a read-only one), not the code's
            raise UserError(f"{label} {path}: {_reason(cause)}") from None
        raise


def check_writable(path: str | Path, label: str = "checkpoint") -> None:
    """A UserError "<label> <path>: <why>" unless a file can be created where ``path`` goes:
    checked before the work that makes its contents, with nothing left behind."""
    path = Path(path)
    folder = _check_folder_possible(path, label)
    probe = temporary_path(folder / path.name)
    try:
        with open(probe, "xb"):
            pass
        probe.unlink()
    except OSError as e:
        remove_quietly(probe)
        raise UserError(f"{label} {path}: {_reason(e)}") from None


def check_new_file(path: str | Path, label: str = "--out") -> None:
    """A UserError naming ``label`` unless ``path`` does not exist yet and can be written:
    outputs never overwrite, and are refused before the work that makes them."""
    if Path(path).exists():
        raise UserError(f"{label} {path} exists: choose another path or delete it first")
    check_writable(path, label)


def _check_folder_possible(path: Path, label: str) -> Path:
    """The nearest existing folder above ``path``; a UserError when a file stands where
    ``path`` needs a folder (mkdir would say only "File exists")."""
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"{label} {path}: {folder} is a file, not a folder")
            return folder
    return Path(".")


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind a failed write: torch wraps one in a RuntimeError of its own."""
    if isinstance(error, OSError):
        return error
    if isinstance(error, RuntimeError) and isinstance(error.__context__, OSError):
        return error.__context__
    return None


def _reason(error: OSError) -> str:
    return error.strerror or one_line(error, limit=200)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, saving through ``atomic_torch_save`` (loading unchanged)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        atomic_torch_save(checkpoint, path)


def install_atomic_checkpoint_io(strategy) -> None:
    """Give ``strategy`` the atomic writer in place of Lightning's default one (one device,
    DDP, FSDP's full saves; FSDP's sharded saves write directories of their own). A checkpoint
    IO plugin the config names (``trainer.plugins``) stays as it is."""
    if type(strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default, made on read
        strategy.checkpoint_io = AtomicCheckpointIO()
