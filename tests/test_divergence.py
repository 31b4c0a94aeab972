"""The divergence guard: a non-finite gradient skips its update, or stops the run, and never
reaches the weights or a checkpoint."""

from __future__ import annotations

import pytest
import torch
from conftest import LOREM, ROOT, last_checkpoint, small_run_args, write_text_corpus
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def nan_config(tmp_path, step: int, every: bool = False) -> str:
    config = tmp_path / "nan.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: kill_switch.NanGradAtStep\n"
        f"      init_args: {{step: {step}, every: {str(every).lower()}}}\n"
    )
    return f"--config={config}"


def run_args(tmp_path, **overrides) -> list[str]:
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    base = {"trainer.max_steps": "8", "checkpoint.every_n_train_steps": "2"}
    return small_run_args(corpus, tmp_path / "data", **{**base, **overrides})


@pytest.mark.parametrize(
    "optimizer",
    [
        # fused AdamW: skipped on the device (found_inf), flag read later
        ["--model.optimizer.init_args.fused=true"],
        # foreach AdamW: flag read at once, gradients dropped
        ["--model.optimizer.init_args.fused=false"],
        # Muon: every change of the step gated by found_inf on the device
        [f"--config={ROOT / 'configs/overlays/muon.yaml'}"],
    ],
    ids=["fused", "foreach", "muon"],
)
def test_skip_leaves_weights_and_optimizer_as_they_were(tmp_path, cli, optimizer):
    overrides = {"trainer.max_steps": "3", "checkpoint.every_n_train_steps": "0"}
    args = [*run_args(tmp_path, **overrides), *optimizer]
    # Steps 0, 1 train; step 2's gradient is NaN: its update must change nothing at all.
    skipped = cli("fit", *args, nan_config(tmp_path, 2))
    assert skipped.returncode == 0, skipped.stderr
    after_skip = last_checkpoint(tmp_path)
    two_steps = cli("fit", *args, "--trainer.max_steps=2")
    assert two_steps.returncode == 0, two_steps.stderr
    before = torch.load(
        tmp_path / "checkpoints/tiny/version_1/checkpoints/last.ckpt", weights_only=True
    )
    for key, value in before["state_dict"].items():
        assert torch.equal(after_skip["state_dict"][key], value), key
    state, want = (c["optimizer_states"][0]["state"] for c in (after_skip, before))
    assert state.keys() == want.keys()
    for index, entries in want.items():  # moments, momentum buffers, step counts
        for name, value in entries.items():
            assert torch.equal(torch.as_tensor(state[index][name]), torch.as_tensor(value))

    events = EventAccumulator(str(tmp_path / "checkpoints/tiny/version_0"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/skipped_steps")] == [(2, 1.0)]


def test_training_goes_on_after_a_skipped_step(tmp_path, cli):
    result = cli("fit", *run_args(tmp_path), nan_config(tmp_path, 3))
    assert result.returncode == 0, result.stderr
    ckpt = last_checkpoint(tmp_path)
    assert ckpt["global_step"] == 8
    assert all(v.isfinite().all() for v in ckpt["state_dict"].values())


def test_stop_policy_exits_3_and_keeps_the_last_good_checkpoint(tmp_path, cli):
    args = run_args(tmp_path, **{"model.nonfinite": "stop"})
    result = cli("fit", *args, nan_config(tmp_path, 5))
    assert result.returncode == 3
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: non-finite gradient norm at step 5 (model.nonfinite is stop)")
    ckpt = last_checkpoint(tmp_path)
    assert ckpt["global_step"] == 4
    assert all(v.isfinite().all() for v in ckpt["state_dict"].values())


def test_stop_between_logging_steps_comes_before_the_next_checkpoint(tmp_path, cli):
    # The flags are read every 4 steps: the NaN of step 5 is read when step 6's checkpoint
    # is about to be saved (before the logging step 8), and that save never happens.
    args = run_args(tmp_path, **{"model.nonfinite": "stop", "trainer.log_every_n_steps": "4"})
    result = cli("fit", *args, nan_config(tmp_path, 5))
    assert result.returncode == 3
    assert "non-finite gradient norm at step 5 (model.nonfinite is stop)" in result.stderr
    assert last_checkpoint(tmp_path)["global_step"] == 4


def test_skips_between_logging_steps_are_counted_and_warned_at_the_next_read(tmp_path, cli):
    args = run_args(
        tmp_path, **{"trainer.log_every_n_steps": "4", "checkpoint.every_n_train_steps": "0"}
    )
    with pytest.warns(UserWarning, match="non-finite gradient norm at step 1: update skipped"):
        result = cli("fit", *args, nan_config(tmp_path, 1))
    assert result.returncode == 0, result.stderr
    assert last_checkpoint(tmp_path)["skipped_steps"] == [1, 0]


def test_a_diverged_run_stops_after_max_consecutive_skips(tmp_path, cli):
    args = run_args(tmp_path, **{"model.max_consecutive_skips": "2"})
    result = cli("fit", *args, nan_config(tmp_path, 3, every=True))
    assert result.returncode == 3
    assert "non-finite gradient norm at step 5 (3 steps in a row)" in result.stderr
    assert last_checkpoint(tmp_path)["global_step"] == 4  # steps 3 and 4 skipped, then saved


def poison_config(tmp_path, step: int) -> str:
    poison = tmp_path / "poison.yaml"
    poison.write_text(
        "trainer:\n  callbacks:\n    - class_path: kill_switch.NanWeightAtStep\n"
        f"      init_args: {{step: {step}}}\n"
    )
    return f"--config={poison}"


def test_non_finite_weights_are_never_saved(tmp_path, cli):
    # Validate (and so save) every 2 steps; no sampling from NaN weights.
    args = run_args(tmp_path, **{"samples.every_n_steps": "0", "trainer.val_check_interval": "2"})
    result = cli("fit", *args, poison_config(tmp_path, 3))
    assert result.returncode == 1
    assert "not saving the checkpoint of step 4: parameter wte.weight" in result.stderr
    assert "is not finite" in result.stderr
    ckpt = last_checkpoint(tmp_path)
    assert ckpt["global_step"] == 2
    assert all(v.isfinite().all() for v in ckpt["state_dict"].values())


def test_a_sample_from_non_finite_weights_is_skipped_with_a_warning(tmp_path, cli):
    """Before, torch's "probability tensor contains either inf, nan" ended the run."""
    options = {"samples.every_n_steps": "1", "trainer.enable_checkpointing": "false"}
    result = cli("fit", *run_args(tmp_path, **options), poison_config(tmp_path, 3))
    assert "samples: none at step 4: the model's logits are not finite" in result.stderr
    assert "Traceback" not in result.stderr and "probability tensor" not in result.stderr
