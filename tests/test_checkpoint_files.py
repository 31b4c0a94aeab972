"""Checkpoint files and their names: written beside their final name whatever ``$TMPDIR`` is,
never through the rotation's hard link, nothing half-written on a full disk, temporaries of
killed saves removed, the rotation's names kept after a moved run folder, non-finite weights
refused at load, and ``--ckpt_path best`` resolved like ``last``."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from test_checkpoints import ckpt_dir, run_args, step_of
from test_resume import fit


def error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr[-3000:]
    return lines[-1]


@pytest.fixture
def tmpdir_elsewhere(tmp_path, monkeypatch):
    """$TMPDIR of the fit subprocesses on another filesystem than tmp_path (/dev/shm)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's folder")
    folder = shm / f"tmpdir-{tmp_path.name}-{os.getpid()}"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_tmpdir_on_another_filesystem_never_writes_through_the_rotation_link(
    tmp_path, tmpdir_elsewhere
):
    """Before, the save was a copy from $TMPDIR into last.ckpt, which the rotation had linked
    as last-1.ckpt: both names held step 8, and a kill during the copy zeroed both."""
    result = fit(tmp_path, run_args(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    folder = ckpt_dir(tmp_path)
    assert (step_of(folder / "last.ckpt"), step_of(folder / "last-1.ckpt")) == (8, 6)
    assert (folder / "last.ckpt").stat().st_ino != (folder / "last-1.ckpt").stat().st_ino
    assert temporaries(folder) == []


@pytest.mark.slow
def test_a_kill_during_a_save_leaves_a_temporary_that_the_resume_removes(
    tmp_path, tmpdir_elsewhere
):
    args = run_args(tmp_path)
    kill = tmp_path / "kill.yaml"
    kill.write_text(
        "trainer:\n  callbacks:\n    - class_path: kill_switch.KillDuringSaveAtStep\n"
        "      init_args: {step: 6}\n"
    )
    killed = fit(tmp_path, args, f"--config={kill}")
    assert killed.returncode == -signal.SIGKILL
    folder = ckpt_dir(tmp_path)
    [left] = temporaries(folder)  # half of step 6's bytes, beside the checkpoints
    assert left.startswith(".") and not left.endswith(".ckpt")
    assert step_of(folder / "last.ckpt") == 4 and step_of(folder / "last-1.ckpt") in (2, 4)

    resumed = fit(tmp_path, args, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoints/tiny/version_0/checkpoints/last.ckpt" in resumed.stderr
    assert f"removed the temporary files of saves that did not finish: {left}" in resumed.stderr
    assert temporaries(folder) == []
    assert (step_of(folder / "last.ckpt"), step_of(folder / "last-1.ckpt")) == (8, 6)


def test_a_full_checkpoint_disk_names_the_checkpoint_and_leaves_nothing(tmp_path, cli, mount_tmpfs):
    """A 1 MB disk, a 1.8 MB checkpoint. Before, the file was copied in from $TMPDIR: half of
    it stayed under its final name, and the error named a /tmp/tmpXXXX file."""
    mount_tmpfs(tmp_path / "checkpoints", "1m")
    result = cli("fit", *run_args(tmp_path))
    line = error_line(result)
    assert line.startswith("error: checkpoint checkpoints/tiny/version_0/checkpoints/step=2")
    assert line.endswith(".ckpt: No space left on device")
    assert list(ckpt_dir(tmp_path).iterdir()) == []  # no half file, no temporary


@pytest.mark.slow
def test_a_small_tmpdir_does_not_stop_saves(tmp_path, mount_tmpfs, monkeypatch):
    """Before, every save went through $TMPDIR first: a 64 KB one failed each."""
    monkeypatch.setenv("TMPDIR", str(mount_tmpfs(tmp_path / "small", "64k")))
    result = fit(tmp_path / "run", run_args(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert step_of(ckpt_dir(tmp_path / "run") / "last.ckpt") == 8


def last_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("last"))


@pytest.mark.parametrize("move", ["version", "name"])
def test_a_moved_run_folder_goes_on_saving_under_the_rotation_names(tmp_path, cli, move):
    """Lightning restores last_model_path only when the checkpoint's dirpath is the run's:
    after a move it saved last-v1.ckpt, and the next --ckpt_path last took the stale last.ckpt."""
    args = run_args(tmp_path, **{"trainer.max_steps": "4"})
    assert cli("fit", *args).returncode == 0
    if move == "version":
        os.rename(tmp_path / "checkpoints/tiny/version_0", tmp_path / "checkpoints/tiny/version_3")
        folder = tmp_path / "checkpoints/tiny/version_3/checkpoints"
    else:
        os.rename(tmp_path / "checkpoints/tiny", tmp_path / "checkpoints/renamed")
        folder = tmp_path / "checkpoints/renamed/version_0/checkpoints"
        args = [*args, "--trainer.logger.init_args.name=renamed"]
    assert cli("fit", *args, "--trainer.max_steps=6", "--ckpt_path=last").returncode == 0
    assert last_names(folder) == ["last-1.ckpt", "last.ckpt"]
    assert (step_of(folder / "last.ckpt"), step_of(folder / "last-1.ckpt")) == (6, 4)
    assert cli("fit", *args, "--trainer.max_steps=8", "--ckpt_path=last").returncode == 0
    assert (step_of(folder / "last.ckpt"), step_of(folder / "last-1.ckpt")) == (8, 6)
    assert last_names(folder) == ["last-1.ckpt", "last.ckpt"]


def test_a_resume_from_a_damaged_last_keeps_the_rotation_names(tmp_path, cli):
    args = run_args(tmp_path)
    assert cli("fit", *args).returncode == 0
    folder = ckpt_dir(tmp_path)
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04 damaged")
    assert cli("fit", *args, "--trainer.max_steps=10", "--ckpt_path=last").returncode == 0
    assert last_names(folder) == ["last-1.ckpt", "last.ckpt", "last.ckpt.unreadable"]
    assert (step_of(folder / "last.ckpt"), step_of(folder / "last-1.ckpt")) == (10, 8)


def with_nan_weight(path: Path, out: Path | None = None) -> Path:
    """The checkpoint with one weight NaN: what a flipped exponent bit does, the file valid."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["state_dict"]["gpt.blocks.0.attn.c_attn.weight"].view(-1)[3] = float("nan")
    torch.save(ckpt, out or path)
    return out or path


NAN_LINE = "parameter blocks.0.attn.c_attn.weight holds NaN or infinity (the file is damaged)"


def test_nan_weights_are_refused_at_load_and_last_falls_back(tmp_path, cli, caplog):
    args = run_args(tmp_path)
    assert cli("fit", *args).returncode == 0
    folder = ckpt_dir(tmp_path)
    nan = with_nan_weight(folder / "last-1.ckpt", tmp_path / "nan.ckpt")
    for extra in ([], ["--trainer.max_steps=10"]):  # validate it, resume from it
        command = "validate" if not extra else "fit"
        line = error_line(cli(command, *args, *extra, f"--ckpt_path={nan}"))
        assert line == f"error: checkpoint {nan}: {NAN_LINE}: use an older checkpoint"

    with_nan_weight(folder / "last.ckpt")
    resumed = cli("fit", *args, "--trainer.max_steps=10", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr
    relative = "checkpoints/tiny/version_0/checkpoints"
    assert f"checkpoint {relative}/last.ckpt: {NAN_LINE}" in caplog.text
    assert f"resuming from the older {relative}/last-1.ckpt instead" in caplog.text
    assert last_names(folder) == ["last-1.ckpt", "last.ckpt", "last.ckpt.unreadable"]
    assert step_of(folder / "last.ckpt") == 10


def test_ckpt_path_best_is_the_newest_runs_best_or_one_line(tmp_path, cli):
    """Lightning knows "best" only in the process that saved it: from the command line it was
    a traceback. Resuming from the best file (saved before last.ckpt at step 2, so holding no
    last_model_path) went on saving as last-v1.ckpt."""
    args = run_args(tmp_path, **{"trainer.max_steps": "2"})
    line = error_line(cli("validate", *args, "--ckpt_path=best"))
    assert line.startswith("error: --ckpt_path best: no best checkpoint in the runs under "
                           "checkpoints/tiny")  # fmt: skip
    line = error_line(cli("fit", *args, "--ckpt_path=best"))
    assert line.startswith("error: --ckpt_path best: no best checkpoint")

    assert cli("fit", *args).returncode == 0
    [best] = [p for p in ckpt_dir(tmp_path).iterdir() if p.name.startswith("step=2-")]
    validated = cli("validate", *args, "--ckpt_path=best")
    assert validated.returncode == 0, validated.stderr
    # the same metrics as the best file named (Lightning's "Restoring" log line is not
    # captured in-process once another test has imported Lightning)
    assert validated.stdout == cli("validate", *args, f"--ckpt_path={best}").stdout
    resumed = cli("fit", *args, "--trainer.max_steps=4", "--ckpt_path=best")
    assert resumed.returncode == 0, resumed.stderr
    folder = ckpt_dir(tmp_path)
    assert last_names(folder) == ["last-1.ckpt", "last.ckpt"]
    assert (step_of(folder / "last.ckpt"), step_of(folder / "last-1.ckpt")) == (4, 2)


@pytest.mark.parametrize("strategy", ["auto", "ddp", "fsdp"])
def test_every_strategy_saves_through_the_atomic_writer(strategy, tmp_path):
    """One device, DDP, and FSDP for its full saves (its sharded saves write directories of
    their own): all get the writer beside the final name."""
    import lightning as L
    from cpu_fsdp import CPUFSDPStrategy

    from lit_gpt_scratch.train.checkpoint_io import AtomicCheckpointIO, install_atomic_checkpoint_io

    chosen = {"auto": "auto", "ddp": "ddp", "fsdp": CPUFSDPStrategy()}[strategy]
    trainer = L.Trainer(accelerator="cpu", devices=1 if strategy == "auto" else 2,
                        strategy=chosen, logger=False, default_root_dir=tmp_path)  # fmt: skip
    install_atomic_checkpoint_io(trainer.strategy)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_the_atomic_writer_never_writes_through_a_link(tmp_path):
    from lit_gpt_scratch.train.checkpoint_io import atomic_torch_save

    atomic_torch_save({"step": 1}, tmp_path / "last.ckpt")
    os.link(tmp_path / "last.ckpt", tmp_path / "last-1.ckpt")
    atomic_torch_save({"step": 2}, tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last-1.ckpt")["step"] == 1
    assert torch.load(tmp_path / "last.ckpt")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-1.ckpt", "last.ckpt"]


def test_ckpt_path_best_without_run_folders_or_with_a_dirpath(tmp_path, cli):
    """Without a logger, or with checkpoint.dirpath set, "best" went to Lightning: a
    ValueError traceback. With a dirpath it is the best file its last.ckpt records."""
    args = run_args(tmp_path, **{"trainer.max_steps": "2"})
    line = error_line(cli("validate", *args, "--trainer.logger=false", "--ckpt_path=best"))
    assert line == (
        "error: --ckpt_path best: this config keeps no run folders (no logger) and sets no "
        "checkpoint.dirpath, so there is no best checkpoint to find: give a checkpoint file"
    )
    folder = tmp_path / "kept"
    line = error_line(cli("validate", *args, f"--checkpoint.dirpath={folder}", "--ckpt_path=best"))
    assert line.startswith(
        f"error: --ckpt_path best: no best checkpoint in checkpoint.dirpath {folder} "
    )
    assert cli("fit", *args, f"--checkpoint.dirpath={folder}").returncode == 0
    [best] = [p for p in folder.iterdir() if p.name.startswith("step=2-")]
    validated = cli("validate", *args, f"--checkpoint.dirpath={folder}", "--ckpt_path=best")
    assert validated.returncode == 0, validated.stderr
    named = cli("validate", *args, f"--checkpoint.dirpath={folder}", f"--ckpt_path={best}")
    assert validated.stdout == named.stdout
