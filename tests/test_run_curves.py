"""A run's curves and best checkpoint are the same however it was stopped: a kill or a signal
at any point of a validated step leaves, after the resume, every validation point of a run
never stopped, and no other; the best checkpoint is named and ranked by its own step's
validation."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
import torch
from conftest import LOREM, data_position, small_run_args, write_text_corpus
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_resume import fit, losses, signal_at

RUN = "checkpoints/tiny/version_0"
# validate and save every 4 steps of 10
OVERRIDES = {
    "trainer.max_steps": "10",
    "trainer.val_check_interval": "4",
    "checkpoint.every_n_train_steps": "4",
    "trainer.limit_val_batches": "2",
}


def val_losses(run: Path) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("val/loss")]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The arguments, and the folder of the run never stopped."""
    root = tmp_path_factory.mktemp("curves")
    corpus = write_text_corpus(root / "corpus", LOREM * 3)
    args = small_run_args(corpus, root / "data", **OVERRIDES)
    done = fit(root / "whole", args)
    assert done.returncode == 0, done.stderr[-3000:]
    return args, root / "whole" / RUN


def test_the_uninterrupted_run_validates_at_the_start_and_at_4_and_8(whole):
    _, run = whole
    # before step 1, at step 0; then at the step index of steps 4 and 8
    assert [s for s, _ in val_losses(run)] == [0, 3, 7]


def scalars_at(run: Path, step: int) -> dict[str, float]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    return {tag: e.value for tag in tags for e in events.Scalars(tag) if e.step == step}


def test_the_first_point_is_the_untrained_models(whole):
    """At step 0, before any update: the loss of a uniform guess over the 4,096 ids."""
    _, run = whole
    first = scalars_at(run, 0)
    assert abs(first["val/loss"] - math.log(4096)) < 0.15
    assert first["val/ppl"] == pytest.approx(math.exp(first["val/loss"]), rel=1e-4)
    assert 0 < first["val/bpb"] and "train/loss" in first


def test_the_validation_at_the_start_leaves_training_bitwise_the_same(tmp_path, whole):
    args, run = whole
    without = fit(tmp_path, args, "--val_at_start=false")
    assert without.returncode == 0, without.stderr[-3000:]
    assert losses(tmp_path / RUN) == losses(run)
    assert val_losses(tmp_path / RUN) == val_losses(run)[1:]  # only the step-0 point differs
    a, b = (
        torch.load(r / "checkpoints/last.ckpt", weights_only=True) for r in (run, tmp_path / RUN)
    )
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert data_position(a) == data_position(b)


@pytest.mark.parametrize("when", ["validation", pytest.param("start", marks=pytest.mark.slow)])
def test_a_kill_around_a_validated_step_keeps_every_validation_point(tmp_path, whole, when):
    """Killed as step 8's validation starts (before, its checkpoint was saved already, and the
    resumed run skipped the validation: the point was lost) or just after that step."""
    args, uninterrupted = whole
    killed = fit(tmp_path, args, signal_at(tmp_path, 8, "SIGKILL", when))
    assert killed.returncode == -signal.SIGKILL
    resumed = fit(tmp_path, args, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert val_losses(tmp_path / RUN) == val_losses(uninterrupted)
    assert losses(tmp_path / RUN) == losses(uninterrupted)


# between validations; a validated step
@pytest.mark.parametrize("step", [6, pytest.param(8, marks=pytest.mark.slow)])
def test_a_signal_stop_adds_no_validation_point_and_loses_none(tmp_path, whole, step):
    args, uninterrupted = whole
    stopped = fit(tmp_path, args, signal_at(tmp_path, step, "SIGTERM"))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    want = [p for p in val_losses(uninterrupted) if p[0] < step]
    assert val_losses(tmp_path / RUN) == want  # no validation of its own at the stop
    last = torch.load(tmp_path / RUN / "checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == step
    resumed = fit(tmp_path, args, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert val_losses(tmp_path / RUN) == val_losses(uninterrupted)


def test_the_best_checkpoint_is_named_and_ranked_by_its_own_validation(whole):
    """Before, step=8's file carried step 4's val_loss, and a better step 8 never replaced
    the best."""
    _, run = whole
    [best] = (run / "checkpoints").glob("step=*.ckpt")
    index, value = min(val_losses(run), key=lambda p: p[1])
    assert best.name == f"step={index + 1}-val_loss={value:.3f}.ckpt"
    assert torch.load(best, weights_only=True)["global_step"] == index + 1


def test_no_checkpoint_is_named_by_another_steps_validation(tmp_path):
    """Saves every 2 steps, validations every 4, every file kept: before, step 6's file
    carried step 4's val_loss (the one callback_metrics still held), ranked by it too."""
    corpus = write_text_corpus(tmp_path / "corpus", LOREM * 3)
    saves = {"checkpoint.every_n_train_steps": "2", "checkpoint.save_top_k": "-1"}
    done = fit(tmp_path, small_run_args(corpus, tmp_path / "data", **{**OVERRIDES, **saves}))
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / RUN
    # by step (the first point is the start's, before any step)
    validated = {index + 1: value for index, value in val_losses(run)[1:]}
    named = sorted((run / "checkpoints").glob("step=*.ckpt"))
    assert [p.name.split("-")[0] for p in named] == ["step=4", "step=8"]
    for path in named:
        step = torch.load(path, weights_only=True)["global_step"]
        assert path.name == f"step={step}-val_loss={validated[step]:.3f}.ckpt"
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 10  # the saves between validations still keep last.ckpt
