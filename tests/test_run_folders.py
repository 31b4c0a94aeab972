"""Run folders have one writer: a second resume of a running run is refused, two new runs
never share a version_N, and restarts that had nothing to resume yet go on in the empty
folder the one before left, rather than leaving one more behind each time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import LOREM, small_run_args, write_text_corpus
from test_resume import TESTS, fit, losses, signal_at


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_text_corpus(tmp_path_factory.mktemp("corpus"), LOREM * 3)


def pause_at(tmp_path: Path, step: int) -> str:
    """A --config option adding tests/kill_switch.PauseAtStep (waits for tmp_path/go)."""
    config = tmp_path / f"pause-{step}.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: kill_switch.PauseAtStep\n"
        f"      init_args: {{step: {step}, folder: {tmp_path}}}\n"
    )
    return f"--config={config}"


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow  # ~25-40 s: two real runs
def test_a_second_resume_of_a_running_run_is_refused_and_changes_nothing(tmp_path, corpus):
    args = small_run_args(corpus, tmp_path / "data", **{"checkpoint.every_n_train_steps": "2"})
    work = tmp_path / "work"
    assert fit(work, args, "--trainer.max_steps=4").returncode == 0
    more = [*args, "--trainer.max_steps=8", "--ckpt_path=last"]
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    first = subprocess.Popen(
        [sys.executable, "-m", "lit_gpt_scratch", "fit", *more, pause_at(tmp_path, 5)],
        cwd=work, env={**os.environ, "PYTHONPATH": path}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(tmp_path / "reached", first)
        run = work / "checkpoints/tiny/version_0"
        before = files(run)
        second = fit(work, more)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1] == (
            "error: run folder checkpoints/tiny/version_0 is in use by another process "
            "(checkpoints/tiny/version_0/.lock is locked): wait for it to finish, or use "
            "another folder"
        )
        assert files(run) == before  # the refused resume wrote nothing, its config neither
    finally:
        (tmp_path / "go").touch()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert [s for s, _ in losses(run)] == list(range(8))


def test_new_runs_that_list_the_folders_at_once_still_get_one_each(tmp_path, monkeypatch):
    from lit_gpt_scratch.train import run_folders as runs_module

    first, first_lock = runs_module.new_run(tmp_path)
    # the second saw the folders before the first made its own: it must still not take it
    monkeypatch.setattr(runs_module, "runs", lambda root: [])
    second, second_lock = runs_module.new_run(tmp_path)
    assert (first.version, second.version) == ("version_0", "version_1")
    assert first_lock.held and second_lock.held
    first_lock.release()
    second_lock.release()


@pytest.mark.slow
def test_restarts_before_the_first_checkpoint_reuse_the_empty_run_folder(tmp_path, corpus):
    overrides = {"trainer.max_steps": "6", "checkpoint.every_n_train_steps": "4"}
    args = [*small_run_args(corpus, tmp_path / "data", **overrides), "--ckpt_path=last"]
    whole = fit(tmp_path / "whole", args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    work = tmp_path / "work"
    for _ in range(2):  # two restarts, each killed before any checkpoint
        killed = fit(work, args, signal_at(tmp_path, 2, "SIGKILL"))
        assert killed.returncode == -9, killed.stderr[-3000:]
    done = fit(work, args)
    assert done.returncode == 0, done.stderr[-3000:]
    root = work / "checkpoints/tiny"
    assert sorted(p.name for p in root.iterdir()) == ["version_0"]
    assert "holds no checkpoint yet" in done.stderr
    # the events of the killed tries were dropped: the curve is the uninterrupted run's
    assert losses(root / "version_0") == losses(tmp_path / "whole/checkpoints/tiny/version_0")


@pytest.mark.slow  # ~25-40 s: two real runs
def test_a_checkpoint_from_outside_the_configs_runs_continues_in_a_new_folder_and_says_so(
    tmp_path, corpus
):
    """A run folder moved away and resumed by its path: the run went on in a new folder with
    no word but Lightning's own warning about its internals ("The dirpath has changed")."""
    args = small_run_args(corpus, tmp_path / "data", **{"checkpoint.every_n_train_steps": "2"})
    work = tmp_path / "work"
    assert fit(work, args, "--trainer.max_steps=2").returncode == 0
    moved = tmp_path / "moved"
    (work / "checkpoints/tiny/version_0").rename(moved)
    last = moved / "checkpoints/last.ckpt"
    resumed = fit(work, args, "--trainer.max_steps=4", f"--ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        f"{last} is not in one of this config's runs (under checkpoints/tiny): training "
        "continues in a new run folder, its curves starting at the checkpoint's step"
    ) in resumed.stderr
    assert "dirpath has changed" not in resumed.stderr
    assert [s for s, _ in losses(work / "checkpoints/tiny/version_0")] == [2, 3]


def test_a_run_folder_removed_while_training_stops_the_run_in_one_line(tmp_path, corpus):
    """Before: 140 lines of tracebacks from TensorBoard's writer thread and Lightning, and no
    error: line; a save could also re-create the folder holding that checkpoint alone."""
    args = small_run_args(corpus, tmp_path / "data", **{"checkpoint.every_n_train_steps": "2"})
    work = tmp_path / "work"
    work.mkdir()
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "lit_gpt_scratch", "fit", *args, "--trainer.max_steps=6",
         pause_at(tmp_path, 3)],
        cwd=work, env={**os.environ, "PYTHONPATH": path}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_for(tmp_path / "reached", proc)
    run = work / "checkpoints/tiny/version_0"
    shutil.rmtree(run)
    (tmp_path / "go").touch()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (
        "error: run folder checkpoints/tiny/version_0 was removed while this run wrote to it: "
        "stopped; its checkpoints went with it"
    )
    assert "Traceback" not in stderr and not run.exists()
