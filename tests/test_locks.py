"""FolderLock: one holder at a time, across real processes, and never left stale by a kill."""

import os
import subprocess
import sys
import threading
import time

import pytest

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.files import FolderLock, folder_lock

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
