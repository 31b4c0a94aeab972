"""Files that are whole or absent, and folders with one writer.

Atomic writes: a file's bytes go to a temporary file beside it, synced to disk and renamed over
its name: a new file, never a write through an existing one, so a kill or a full disk leaves the
old file (or none) in place, and the temporary is removed (or, after a kill, found by
``remove_stale``).

Folder locks: an exclusive advisory lock (``flock``) on a ``.lock`` file inside the folder. The
kernel drops the lock when its process ends, however it ends (``kill -9`` included), so a lock
is never left stale. ``flock`` works across processes and, on NFS v4 and Lustre, across nodes
that mount the same folder.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from lit_gpt_scratch.errors import UserError

LOCK_NAME = ".lock"

# --- atomic writes ---------------------------------------------------------------------------

# A temporary name is ".<final name>.<pid>.tmp": hidden, and never ending like its final name
# (.ckpt, .json), so nothing that lists the real files takes one for them.
TEMP_SUFFIX = ".tmp"


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def is_temporary(path: Path) -> bool:
    """A file a write makes before its rename."""
    return path.name.endswith(TEMP_SUFFIX)


@contextmanager
def atomic_write(path: str | Path):
    """A new binary file to write ``path``'s contents into: when the block ends, it is synced
    and renamed over ``path``, and the folder synced, so ``path`` holds the whole new contents
    or is as it was. Any error removes the temporary file; an OSError names ``path``."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        tmp.unlink(missing_ok=True)  # a stale one of this pid: never written through
        with open(tmp, "xb") as file:  # a new file, whatever links exist
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        sync_folder(path.parent)  # the rename itself survives a power cut
    except BaseException as e:
        remove_quietly(tmp)
        if isinstance(e, OSError) and e.filename != str(path):
            raise OSError(e.errno, e.strerror, str(path)) from None  # not the temporary's name
        raise


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through ``atomic_write``."""
    with atomic_write(path) as file:
        file.write(data.encode() if isinstance(data, str) else data)


def read_utf8(path: str | Path) -> str:
    """A file's text as stored, newlines untranslated (``read_text`` turns ``\r\n`` into
    ``\n``): its UTF-8 bytes are exactly the file's. UnicodeDecodeError if it is not UTF-8."""
    return Path(path).read_bytes().decode("utf-8")


def sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def remove_stale(folder: Path) -> list[Path]:
    """Remove the temporary files that writes killed midway left in ``folder``; the removed.
    Unlinking only: a temporary may be a second name of a real file (a hard link)."""
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and is_temporary(p)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


# --- one writer per folder -------------------------------------------------------------------


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
