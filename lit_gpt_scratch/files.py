"""One writer per folder: an exclusive advisory lock (``flock``) on a ``.lock`` file inside it.

The kernel drops the lock when its process ends, however it ends (``kill -9`` included), so
a lock is never left stale. ``flock`` works across processes and, on NFS v4 and Lustre, across
nodes that mount the same folder.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from lit_gpt_scratch.errors import UserError

LOCK_NAME = ".lock"


class FolderLock:
    """An exclusive lock on ``folder``, taken by ``acquire`` and dropped by ``release``.

    Args:
        folder: The folder to lock; created if missing.
        what: How messages name it, e.g. ``"data_dir data/stdlib"``.
    """

    def __init__(self, folder: str | Path, what: str):
        self.folder, self.what = Path(folder), what
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self, wait_s: float = 0.0, poll_s: float = 0.1) -> None:
        """Take the lock, waiting up to ``wait_s`` seconds for another holder to finish;
        UserError in one line when it is still held then."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _names(self.path, fd):
                    break
                # The holder removed the file as it finished (see remove_and_release): a lock
                # on that unlinked file excludes no one. Lock the file the path names now.
                os.close(fd)
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                continue
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise UserError(
                        f"{self.what} is in use by another process ({self.path} is locked): "
                        "wait for it to finish, or use another folder"
                    ) from None
                time.sleep(poll_s)
        # who holds it, for a person who looks (the lock itself is the flock, not this text)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:  # a full disk: name the file
            os.close(fd)
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def remove_and_release(self) -> None:
        """Remove the lock file, then release: for a folder that must be left as it was."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` is still the file open as ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (opened.st_dev, opened.st_ino)


@contextmanager
def folder_lock(folder: str | Path, what: str, wait_s: float = 0.0):
    """``with folder_lock(path, "data_dir x"):`` holds the lock for the block."""
    lock = FolderLock(folder, what)
    lock.acquire(wait_s)
    try:
        yield lock
    finally:
        lock.release()
