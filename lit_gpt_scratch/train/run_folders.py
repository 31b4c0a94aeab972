"""Run folders: ``<save_dir>/<name>/version_N/`` holds one run's TensorBoard events,
``config.yaml`` and ``checkpoints/``. Resuming finds the newest run's ``last.ckpt`` and goes on
writing into that same folder, so its curves continue instead of splitting.

One process writes a run folder at a time: it holds the folder's lock (``files.FolderLock``)
from the start, and a new run makes its ``version_N`` with an exclusive ``mkdir``, so two
runs started at once never pick the same one."""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.files import FolderLock, is_temporary
from lit_gpt_scratch.train.checkpoints import last_candidates_in

VERSION_RE = re.compile(r"version_(\d+)")


@dataclass(frozen=True)
class RunFolder:
    root: Path  # <save_dir>/<name>
    version: str  # version_N

    @property
    def path(self) -> Path:
        return self.root / self.version

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.ckpt"


def runs_root(logger_config) -> Path | None:
    """``<save_dir>/<name>`` of a logger config section (class_path + init_args) that has
    both, as TensorBoard's and CSV's do; None for no logger or one without run folders."""
    init_args = getattr(logger_config, "init_args", None)
    save_dir = getattr(init_args, "save_dir", None)
    if save_dir is None:
        return None
    name = getattr(init_args, "name", None)
    if name and (Path(name).name != name or name in (".", "..")):
        raise UserError(
            f"trainer.logger.init_args.name {name!r} is not a plain folder name: runs land in "
            f"{save_dir}/<name>/, so leave out '/' and '..'"
        )
    return Path(save_dir) / name if name else Path(save_dir)


def runs(root: Path) -> list[RunFolder]:
    """The run folders under ``root``, oldest (lowest N) first."""
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if p.is_dir() and VERSION_RE.fullmatch(p.name)]
    return [RunFolder(root, v) for v in sorted(found, key=lambda v: int(v[len("version_") :]))]


def lock_run(run: RunFolder) -> FolderLock:
    """The run folder's lock, taken; one line when another process holds it."""
    lock = FolderLock(run.path, f"run folder {run.path}")
    lock.acquire()
    return lock


def new_run(root: Path) -> tuple[RunFolder, FolderLock]:
    """The next ``version_N`` under ``root``, made and locked by this process alone."""
    existing = runs(root)
    n = int(existing[-1].version[len("version_") :]) + 1 if existing else 0
    _made_above.extend(p for p in [root, *root.parents] if not p.exists())  # innermost first
    root.mkdir(parents=True, exist_ok=True)
    while True:
        run = RunFolder(root, f"version_{n}")
        n += 1
        try:
            run.path.mkdir()
        except FileExistsError:  # another run made it first
            continue
        try:
            lock = lock_run(run)
        except UserError:  # a restart took it as an empty folder to reuse: take the next
            continue
        _made_runs.append(run.path)
        return run, lock


# What new_run made in this process: a command that fails before its loop begins takes it
# away again (forget_new_runs).
_made_runs: list[Path] = []
_made_above: list[Path] = []  # the runs root and its parents, innermost first


def forget_new_runs(remove: bool) -> None:
    """Keep the folders new_run made (the run's loop has begun), or with ``remove`` (the
    command failed before that) remove them: what they hold then is only what the start
    wrote (the lock, config.yaml, hparams.yaml, an events file without a step), so a
    command refused at its start leaves no run folder behind."""
    if remove:
        for run in _made_runs:
            shutil.rmtree(run, ignore_errors=True)
        for folder in _made_above:
            with contextlib.suppress(OSError):  # not empty: another run's, kept
                folder.rmdir()
    _made_runs.clear()
    _made_above.clear()


def reusable_empty_run(root: Path) -> tuple[RunFolder, FolderLock] | None:
    """The newest run folder, locked, when it holds no checkpoint (a run stopped before its
    first save) and no other process uses it: a restart with nothing to resume goes on in it
    rather than leaving one more empty folder behind."""
    found = runs(root)
    if not found or holds_checkpoints(found[-1]):
        return None
    try:
        return found[-1], lock_run(found[-1])
    except UserError:
        return None


def holds_checkpoints(run: RunFolder) -> bool:
    """Anything in its checkpoints/ but the temporary files of saves that did not finish."""
    folder = run.path / "checkpoints"
    return folder.is_dir() and any(not is_temporary(p) for p in folder.iterdir())


def newest_resumable(root: Path) -> RunFolder | None:
    """The newest run folder that holds a ``last.ckpt`` (or an older ``last-N.ckpt``)."""
    for run in reversed(runs(root)):
        if last_candidates(run):
            return run
    return None


def run_of_checkpoint(ckpt_path: str | Path, root: Path) -> RunFolder | None:
    """The run folder a checkpoint file lies in (``root/version_N/checkpoints/x.ckpt``)."""
    ckpt = Path(ckpt_path).resolve()
    folder = ckpt.parent.parent
    if ckpt.parent.name != "checkpoints" or folder.parent != root.resolve():
        return None
    return RunFolder(root, folder.name) if VERSION_RE.fullmatch(folder.name) else None


def last_candidates(run: RunFolder) -> list[Path]:
    """``last.ckpt``, ``last-1.ckpt``, ... of a run folder, newest first, those that exist."""
    return last_candidates_in(run.last_checkpoint.parent)
