"""global_batch_size sets the gradient accumulation from the devices; val_every_n_steps counts
optimizer steps whatever the accumulation."""

from __future__ import annotations

import pytest
from conftest import LOREM, data_position, last_checkpoint, small_run_args, write_text_corpus
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def run_args(tmp_path, **overrides) -> list[str]:
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    base = {"trainer.max_steps": "3", "samples.every_n_steps": "0"}
    return small_run_args(corpus, tmp_path / "data", **{**base, **overrides})


def test_global_batch_size_sets_the_accumulation(tmp_path, cli, caplog):
    # 12 windows per step = batch 4 x 1 device x 3 accumulated: 3 steps train on 9 batches.
    args = run_args(tmp_path, **{"trainer.val_check_interval": "3"})
    result = cli("fit", *args, "--global_batch_size=12")
    assert result.returncode == 0, result.stderr
    assert "global batch 12 windows = data.batch_size 4 x 1 devices x 3 accumulated" in (
        result.stderr + caplog.text
    )
    ckpt = last_checkpoint(tmp_path)
    assert ckpt["global_step"] == 3
    assert ckpt["datamodule_hyper_parameters"]["batch_size"] == 4
    assert data_position(ckpt)["index"] == 9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--global_batch_size=6"],
            "error: global_batch_size 6 is not a multiple of data.batch_size 4 x 1 devices = 4: "
            "change data.batch_size",
        ),
        (["--global_batch_size=0"], "error: global_batch_size must be at least 1, got 0"),
        (
            ["--global_batch_size=8", "--trainer.accumulate_grad_batches=4"],
            "error: trainer.accumulate_grad_batches 4 contradicts global_batch_size 8 (4 x 1 "
            "devices x 2): set only one",
        ),
        (
            ["--val_every_n_steps=2", "--trainer.val_check_interval=3"],
            "error: val_every_n_steps 2 and trainer.val_check_interval 3 both set: set only one",
        ),
        (["--val_every_n_steps=0"], "error: val_every_n_steps must be at least 1, got 0"),
    ],
)
def test_inconsistent_batch_or_validation_settings_are_one_line(tmp_path, cli, args, message):
    result = cli("fit", *run_args(tmp_path), *args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == message


def test_val_every_n_steps_counts_optimizer_steps(tmp_path, cli):
    # the tiny config sets trainer.val_check_interval: unset it to use val_every_n_steps
    args = run_args(tmp_path, **{"trainer.max_steps": "4", "trainer.val_check_interval": "null"})
    result = cli("fit", *args, "--global_batch_size=8", "--val_every_n_steps=2")
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(tmp_path / "checkpoints/tiny/version_0"))
    events.Reload()
    # accumulation 2: validation every 4 batches = after optimizer steps 2 and 4, which
    # Lightning logs at their 0-based indices (as val/loss after step 200 shows at 199)
    assert [e.step for e in events.Scalars("val/loss")] == [0, 1, 3]  # 0: before step 1
