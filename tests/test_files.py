"""Atomic writes: a file is whole or as it was, and no temporary is left; FolderLock: one
holder at a time, across real processes, and never left stale by a kill."""

import os
import subprocess
import sys
import threading
import time

import pytest

from lit_gpt_scratch.errors import UserError, one_line
from lit_gpt_scratch.files import FolderLock, atomic_write, folder_lock, remove_stale, write_atomic


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "meta.json"
    write_atomic(path, "old")
    with pytest.raises(RuntimeError, match="midway"), atomic_write(path) as file:
        file.write(b"half of the new")
        raise RuntimeError("midway")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]
    write_atomic(path, "new")
    assert path.read_text() == "new"


def test_a_write_into_a_missing_folder_names_the_file_not_its_temporary(tmp_path):
    path = tmp_path / "missing" / "meta.json"
    with pytest.raises(FileNotFoundError) as raised:
        write_atomic(path, "x")
    assert raised.value.filename == str(path)


def test_remove_stale_takes_only_temporaries(tmp_path):
    (tmp_path / "last.ckpt").write_text("kept")
    (tmp_path / ".last.ckpt.123.tmp").write_text("left by a kill")
    assert [p.name for p in remove_stale(tmp_path)] == [".last.ckpt.123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_one_line_collapses_whitespace_and_unwraps_a_worker_error():
    assert one_line(ValueError("bad\n  value\tthere")) == "bad value there"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(OSError("x" * 300), limit=200) == "x" * 200
    wrapped = (
        "Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        "call last):\n  File ...\nlit_gpt_scratch.errors.UserError: shard x is short"
    )
    assert one_line(RuntimeError(wrapped)) == "shard x is short"


HOLD = """
import sys, time
from lit_gpt_scratch.files import FolderLock
FolderLock(sys.argv[1], "x").acquire()
print("held", flush=True)
time.sleep(60)
"""


def hold_in_other_process(folder):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"held"
    return holder


def test_a_second_holder_is_refused_in_one_line_naming_the_folder(tmp_path):
    holder = hold_in_other_process(tmp_path)
    try:
        with pytest.raises(UserError, match=r"^data_dir d is in use by another process"):
            FolderLock(tmp_path, "data_dir d").acquire(wait_s=0.2)
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = hold_in_other_process(tmp_path)
    holder.kill()  # SIGKILL: no cleanup code runs
    holder.wait()
    with folder_lock(tmp_path, "x") as lock:
        assert lock.held


def test_a_waiter_gets_the_lock_once_the_holder_ends(tmp_path):
    holder = hold_in_other_process(tmp_path)
    killer = subprocess.Popen(["sh", "-c", f"sleep 0.5; kill {holder.pid}"])
    lock = FolderLock(tmp_path, "x")
    lock.acquire(wait_s=30)
    assert lock.held
    lock.release()
    killer.wait()
    holder.wait()


def test_a_waiter_on_a_lock_file_removed_by_its_holder_locks_the_new_one(tmp_path):
    first = FolderLock(tmp_path, "x")
    first.acquire()
    waiter = FolderLock(tmp_path, "x")
    thread = threading.Thread(target=waiter.acquire, kwargs={"wait_s": 30, "poll_s": 0.01})
    thread.start()  # it opened the lock file that `first` is about to remove
    time.sleep(0.2)
    first.remove_and_release()
    thread.join()
    assert waiter.held
    with pytest.raises(UserError, match=r"^x is in use by another process"):
        FolderLock(tmp_path, "x").acquire()  # the waiter excludes anyone who comes now
    waiter.remove_and_release()
    assert os.listdir(tmp_path) == []
