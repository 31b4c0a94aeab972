"""Exact resume: a run SIGKILLed mid-way and resumed with --ckpt_path last trains on the same
windows in the same order as one never stopped: per-step losses and final weights bitwise equal."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LOREM, small_run_args, write_text_corpus
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_gpt_scratch.train.rng import rng_states, set_rng_states

TESTS = Path(__file__).resolve().parent


def fit(cwd: Path, args: list[str], *extra: str) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "lit_gpt_scratch", "fit", *args, *extra],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def signal_at(
    tmp_path: Path, step: int, name: str, when: str = "end", batch: int = -1, times: int = 1,
    **more: str,
) -> str:  # fmt: skip
    """A --config option adding tests/kill_switch.SignalAtStep to the run's callbacks."""
    config = tmp_path / f"{name}-{step}-{batch}-{times}-{'-'.join(more.values())}.yaml"
    options = f"step: {step}, signal: {name}, when: {when}, batch: {batch}, times: {times}"
    options += "".join(f", {key}: {value}" for key, value in more.items())
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: kill_switch.SignalAtStep\n"
        f"      init_args: {{{options}}}\n"
    )
    return f"--config={config}"


def losses(run: Path) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("train/loss")]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_text_corpus(tmp_path_factory.mktemp("corpus"), LOREM * 3)


@pytest.mark.parametrize(
    ("num_workers", "kill_step", "when"),
    # between two saves; just after the save at step 8
    [(0, 7, "end"), pytest.param(2, 8, "start", marks=pytest.mark.slow)],
)
def test_killed_and_resumed_run_equals_an_uninterrupted_one(
    tmp_path, corpus, num_workers, kill_step, when
):
    overrides = {
        "trainer.max_steps": "12",
        "trainer.deterministic": "true",
        "checkpoint.every_n_train_steps": "4",
        "trainer.val_check_interval": "4",
        "data.num_workers": str(num_workers),
        "data.persistent_workers": "false",
    }
    args = small_run_args(corpus, tmp_path / "data", **overrides)
    whole = fit(tmp_path / "whole", args)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = fit(tmp_path / "killed", args, signal_at(tmp_path, kill_step, "SIGKILL", when))
    assert killed.returncode == -signal.SIGKILL
    resumed = fit(tmp_path / "killed", args, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    run_whole = tmp_path / "whole/checkpoints/tiny/version_0"
    run_resumed = tmp_path / "killed/checkpoints/tiny/version_0"
    assert losses(run_whole) == losses(run_resumed)  # steps 0..11, bitwise
    assert [s for s, _ in losses(run_resumed)] == list(range(12))
    a, b = final_weights(run_whole), final_weights(run_resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "killed/checkpoints/tiny/version_1").exists()


@pytest.fixture(scope="module")
def ten_steps_run(corpus, tmp_path_factory):
    """A 10-step run never stopped, saving every 4 steps: its arguments and run folder."""
    root = tmp_path_factory.mktemp("ten")
    overrides = {"trainer.max_steps": "10", "checkpoint.every_n_train_steps": "4"}
    args = small_run_args(corpus, root / "data", **overrides)
    whole = fit(root / "whole", args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    return args, root / "whole/checkpoints/tiny/version_0"


@pytest.fixture(scope="module")
def ten_steps(ten_steps_run):
    """Arguments of a 10-step run, and the per-step losses of that run never stopped."""
    args, run = ten_steps_run
    return args, losses(run)


def test_a_run_that_ends_between_two_saves_keeps_its_last_step(ten_steps_run):
    """Saves every 4 steps and max_steps 10: last.ckpt held step 8, and the last two steps
    of training were in no file."""
    _, run = ten_steps_run
    last = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 10
    before = torch.load(run / "checkpoints/last-1.ckpt", map_location="cpu", weights_only=True)
    assert before["global_step"] == 8


# tests/test_run_curves.py stops with SIGTERM in the default suite
@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1", "SIGINT"])
def test_signal_saves_the_current_step_and_exits_with_its_code(tmp_path, ten_steps, name):
    args, uninterrupted = ten_steps
    stopped = fit(tmp_path / "run", args, signal_at(tmp_path, 6, name))
    signum = int(getattr(signal, name))
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    assert f"{name} received: saving a checkpoint at the end of this step" in stopped.stderr
    run = tmp_path / "run/checkpoints/tiny/version_0"
    last = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 6  # the step the signal arrived in, not the save before

    resumed = fit(tmp_path / "run", args, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(run) == uninterrupted


@pytest.mark.slow
def test_a_signal_between_micro_batches_saves_at_the_end_of_that_optimizer_step(tmp_path, corpus):
    """2 micro-batches per optimizer step: SIGTERM after the first micro-batch of step 6
    (batch 12) saves once the step's last one is done, at step 7, and the resumed run equals
    one never stopped. A save between the two lost the first micro-batch's gradient: most of
    the resumed losses and the final weights differed."""
    overrides = {
        "trainer.max_steps": "10",
        "trainer.accumulate_grad_batches": "2",
        "trainer.val_check_interval": "8",
        "checkpoint.every_n_train_steps": "4",
    }
    args = small_run_args(corpus, tmp_path / "data", **overrides)
    whole = fit(tmp_path / "whole", args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    stopped = fit(tmp_path / "run", args, signal_at(tmp_path, -1, "SIGTERM", batch=12))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    run = tmp_path / "run/checkpoints/tiny/version_0"
    last = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 7  # the end of the step the signal arrived in

    resumed = fit(tmp_path / "run", args, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(run) == losses(tmp_path / "whole/checkpoints/tiny/version_0")
    a, b = final_weights(tmp_path / "whole/checkpoints/tiny/version_0"), final_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_ctrl_c_stops_at_once_with_code_130_and_says_so(tmp_path, ten_steps):
    """Lightning turned the second Ctrl-C's KeyboardInterrupt into exit code 1 (the bad-input
    code) with no error line."""
    args, _ = ten_steps
    stopped = fit(tmp_path / "run", args, signal_at(tmp_path, 6, "SIGINT", times=2))
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert stopped.stderr.strip().splitlines()[-1] == (
        "error: stopped at once by a second Ctrl-C, without saving this step: "
        "--ckpt_path last resumes from the last checkpoint saved"
    )
    run = tmp_path / "run/checkpoints/tiny/version_0"
    last = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 4  # the save before; nothing at step 6


def test_rng_states_round_trip():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    saved = rng_states()
    want = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_states(saved)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert want[:2] == got[:2] and torch.equal(want[2], got[2])


@pytest.mark.parametrize(
    ("first", "later_at"),
    [("SIGINT", "exit"), pytest.param("SIGINT", "train_end", marks=pytest.mark.slow),
     pytest.param("", "exit", marks=pytest.mark.slow)],
)  # fmt: skip
def test_a_signal_after_the_stop_or_the_end_does_not_change_the_exit_code(
    tmp_path, ten_steps, first, later_at
):
    """A SIGUSR1 0.3 s after the Ctrl-C's save, as the process ended, took its default
    action: the saved run exited 138 instead of 130 (and a finished one 138 instead of 0)."""
    args, _ = ten_steps
    step = 6 if first else 99  # no first signal: the run ends at step 10
    switch = signal_at(tmp_path, step, first or "SIGINT", later="SIGUSR1", later_at=later_at)
    stopped = fit(tmp_path / "run", args, switch)
    assert stopped.returncode == (130 if first else 0), stopped.stderr[-3000:]
    assert "SIGUSR1 received: ignored" in stopped.stderr
    run = tmp_path / "run/checkpoints/tiny/version_0"
    last = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == (6 if first else 10)
