"""What ``fit --ckpt_path last`` accepts: changed optimizer and schedule settings apply from
the resumed step; another tokenizer, optimizer class, corpus or data.seed, a checkpoint
missing state, and a checkpoint already at max_steps are each said in one line."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import LOREM, last_checkpoint, small_run_args, write_text_corpus
from test_resume import fit, losses

from lit_gpt_scratch.train.schedules import WarmupCosineLR

RUN = "checkpoints/tiny/version_0"
SCHEDULE = {"model.lr_scheduler.init_args.warmup_steps": "2", "trainer.max_steps": "6"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 6-step run (checkpoints at steps 3 and 6), made once: (its folder, its arguments)."""
    root = tmp_path_factory.mktemp("finished")
    corpus = write_text_corpus(root / "corpus", LOREM)
    args = small_run_args(corpus, root / "data", **SCHEDULE)
    done = fit(root / "work", args)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "work", args


@pytest.fixture
def run(finished, tmp_path, monkeypatch):
    """A copy of the finished run in tmp_path (where the cli fixture runs): its arguments."""
    work, args = finished
    shutil.copytree(work / "checkpoints", tmp_path / "checkpoints")
    return args


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def logged(run_dir, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_changed_lr_schedule_and_longer_run_apply_from_the_resumed_step(tmp_path, cli, run):
    """Before, the checkpoint's schedule went on: with max_steps raised from 6 to 12 every
    new step ran at the old min_lr, whatever lr, warmup_steps and min_lr the config said."""
    changed = {
        "trainer.max_steps": "12",
        "model.optimizer.init_args.lr": "0.001",
        "model.optimizer.init_args.weight_decay": "0.05",
        "model.lr_scheduler.init_args.warmup_steps": "3",
        "model.lr_scheduler.init_args.min_lr": "0.0001",
    }
    resumed = cli("fit", *run, *(f"--{k}={v}" for k, v in changed.items()), "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 6 with the config's settings (model.optimizer lr 0.003 -> 0.001" in (
        resumed.stderr
    )
    # the new schedule's value at each resumed step, as a run started with it would have it
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.001)
    schedule = WarmupCosineLR(optimizer, warmup_steps=3, min_lr=0.0001)
    schedule.set_total_steps(12)
    lrs = logged(tmp_path / RUN, "lr-AdamW/pg1")
    for step in range(6, 12):
        assert lrs[step] == np.float32(schedule.lr_at(step, 0.001)), step
    assert lrs[11] > 0.0001  # still decaying: the cosine stretched over 12 steps
    ckpt = last_checkpoint(tmp_path)
    assert ckpt["global_step"] == 12
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.05, 0.0]
    assert {g["initial_lr"] for g in groups} == {0.001}
    # the config saved for this resume is the one that ran
    saved = yaml.safe_load((tmp_path / RUN / "config-resumed-at-step-6.yaml").read_text())
    assert saved["model"]["optimizer"]["init_args"]["lr"] == 0.001
    assert saved["model"]["optimizer"]["init_args"]["weight_decay"] == 0.05
    assert saved["model"]["lr_scheduler"]["init_args"]["warmup_steps"] == 3
    assert saved["model"]["lr_scheduler"]["init_args"]["min_lr"] == 0.0001
    assert saved["trainer"]["max_steps"] == 12


@pytest.mark.parametrize("max_steps", [6, 4])
def test_a_resume_at_or_past_max_steps_does_nothing_and_says_so(tmp_path, cli, run, max_steps):
    """Before, it started a run that looked normal (a new config file, validations)."""
    before = {p: p.read_bytes() for p in sorted((tmp_path / "checkpoints").rglob("*"))
              if p.is_file()}  # fmt: skip
    result = cli("fit", *run, f"--trainer.max_steps={max_steps}", "--ckpt_path=last")
    assert result.returncode == 0, result.stderr
    assert last_line(result) == (
        f"checkpoint {RUN}/checkpoints/last.ckpt is at step 6 and trainer.max_steps is "
        f"{max_steps}: nothing to train, nothing written (raise trainer.max_steps to train "
        "further)"
    )
    after = {p: p.read_bytes() for p in sorted((tmp_path / "checkpoints").rglob("*"))
             if p.is_file()}  # fmt: skip
    assert after == before  # no new run folder, no file changed


def test_changed_accumulation_precision_and_clipping_are_named_on_resume(cli, run):
    """They change what a step is (the data continues exactly: its position counts batches),
    so they are applied; before, nothing said so."""
    changed = [
        "--trainer.max_steps=8",
        "--trainer.accumulate_grad_batches=2",
        "--trainer.precision=32-true",
        "--trainer.gradient_clip_val=0.5",
    ]
    resumed = cli("fit", *run, *changed, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr
    assert (
        "resumed at step 6 with the config's settings (trainer.accumulate_grad_batches 1 -> 2, "
        "trainer.precision bf16-mixed -> 32-true, trainer.gradient_clip_val 1.0 -> 0.5, "
    ) in resumed.stderr
    ckpt = last_checkpoint(Path.cwd())
    assert ckpt["global_step"] == 8
    assert ckpt["trainer_recipe"] == {
        "accumulate_grad_batches": 2, "precision": "32-true", "gradient_clip_val": 0.5
    }  # fmt: skip


def test_another_tokenizer_is_refused_naming_both(tmp_path, cli, run):
    """Before: KeyError 'Invalid token for decoding' from the first text sample."""
    other = [*run, f"--data.data_dir={tmp_path / 'bytes-data'}", "--data.tokenizer=bytes"]
    result = cli("fit", *other, "--trainer.max_steps=8", "--ckpt_path=last")
    assert result.returncode == 1
    assert last_line(result) == (
        f"error: data.tokenizer: 'bytes' in the config, 'stdlib-4k' in checkpoint "
        f"{RUN}/checkpoints/last.ckpt: the model's token ids are 'stdlib-4k''s; resume with "
        "data.tokenizer 'stdlib-4k', or start a new run"
    )


def test_another_optimizer_class_is_refused_naming_both(tmp_path, cli, run):
    """Before: KeyError 'momentum' from Muon's first step on AdamW's state."""
    muon = ["--model.optimizer.class_path=lit_gpt_scratch.train.optimizers.Muon",
            "--model.optimizer.init_args.lr=0.02"]  # fmt: skip
    result = cli("fit", *run, *muon, "--trainer.max_steps=8", "--ckpt_path=last")
    assert result.returncode == 1
    assert last_line(result) == (
        "error: model.optimizer: lit_gpt_scratch.train.optimizers.Muon in the config, "
        f"lit_gpt_scratch.train.optimizers.AdamW in checkpoint {RUN}/checkpoints/last.ckpt: its "
        "saved state is for AdamW; resume with that optimizer, or start a new run from the "
        "checkpoint's weights"
    )


def _data_dir(run: list[str]) -> str:
    return next(a.split("=", 1)[1] for a in run if a.startswith("--data.data_dir="))


def test_another_corpus_is_refused_unless_approximate(tmp_path, cli, run, caplog):
    """Before, the run went on silently at the old corpus's data position."""
    corpus = write_text_corpus(tmp_path / "other", [d.upper() for d in LOREM])
    other = tmp_path / "other-data"
    more = [*run, f"--data.sources=[{corpus}]", f"--data.data_dir={other}",
            "--trainer.max_steps=8", "--ckpt_path=last"]  # fmt: skip
    refused = cli("fit", *more)  # prepared by this run: the data module's own check
    assert refused.returncode == 1
    first_data_dir = _data_dir(run)
    assert last_line(refused) == (
        f"error: data.data_dir: {other} in the config holds another corpus than the "
        f"checkpoint's {first_data_dir}, where the saved data position means nothing; resume "
        "on the checkpoint's data_dir, or set data.allow_approximate_resume: true to start "
        "this corpus from its first window"
    )
    again = cli("fit", *more)  # prepared now: refused before anything is built
    assert last_line(again) == last_line(refused)
    with caplog.at_level(logging.WARNING):
        accepted = cli("fit", *more, "--data.allow_approximate_resume=true")
    assert accepted.returncode == 0, accepted.stderr
    assert f"data.data_dir {other} holds another corpus than the checkpoint's" in caplog.text
    assert last_checkpoint(tmp_path)["TokenDataModule"]["sampler"]["index"] == 2  # from 0


def test_a_moved_data_dir_resumes_exactly(finished, tmp_path, cli, run):
    """The corpus is told by its token files' description, not by its path: the resume from
    a copy of data_dir equals the resume from the original, loss for loss."""
    moved = tmp_path / "moved-data"
    shutil.copytree(_data_dir(run), moved)
    more = [*run, f"--data.data_dir={moved}", "--trainer.max_steps=8", "--ckpt_path=last"]
    resumed = cli("fit", *more)
    assert resumed.returncode == 0, resumed.stderr
    assert "approximate" not in resumed.stderr
    assert last_checkpoint(tmp_path)["TokenDataModule"]["sampler"]["index"] == 8  # continued
    work, args = finished
    shutil.copytree(work / "checkpoints", tmp_path / "orig/checkpoints")
    original = fit(tmp_path / "orig", args, "--trainer.max_steps=8", "--ckpt_path=last")
    assert original.returncode == 0, original.stderr[-3000:]
    assert losses(tmp_path / RUN) == losses(tmp_path / "orig" / RUN)


def test_another_seed_is_refused_unless_approximate(tmp_path, cli, run):
    """Before, the checkpoint's order went on while the saved config said the new seed."""
    more = [*run, "--data.seed=99", "--trainer.max_steps=8", "--ckpt_path=last"]
    refused = cli("fit", *more)
    assert refused.returncode == 1
    assert last_line(refused) == (
        "error: data.seed: 99 in the config, 1234 in the checkpoint: another window order, "
        "where the saved data position means nothing; keep data.seed 1234, or set "
        "data.allow_approximate_resume: true"
    )
    accepted = cli("fit", *more, "--data.allow_approximate_resume=true")
    assert accepted.returncode == 0, accepted.stderr
    assert last_checkpoint(tmp_path)["TokenDataModule"]["sampler"]["seed"] == 99


LOSSES = {
    "loops": "the step count restarts at 0",
    "rng_states": "dropout and sampling draw other random numbers",
    "TokenDataModule": "the data order restarts from the first window",
}


@pytest.mark.parametrize("key", list(LOSSES))
def test_a_checkpoint_missing_state_is_refused_naming_it(tmp_path, cli, run, key):
    """Before, each resumed with exit code 0 and exactness silently lost."""
    last = tmp_path / RUN / "checkpoints/last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    del ckpt[key]
    torch.save(ckpt, last)
    result = cli("fit", *run, "--trainer.max_steps=8", "--ckpt_path=last")
    assert result.returncode == 1
    assert last_line(result) == (
        f"error: checkpoint {RUN}/checkpoints/last.ckpt lacks state an exact resume needs "
        f"(no {key}: {LOSSES[key]}): set data.allow_approximate_resume: true to resume "
        "without it"
    )


def test_a_checkpoint_missing_state_resumes_approximately_when_allowed(tmp_path, cli, run, caplog):
    last = tmp_path / RUN / "checkpoints/last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    for key in ("rng_states", "TokenDataModule"):
        del ckpt[key]
    torch.save(ckpt, last)
    more = [*run, "--trainer.max_steps=8", "--ckpt_path=last"]
    with caplog.at_level(logging.WARNING):
        result = cli("fit", *more, "--data.allow_approximate_resume=true")
    assert result.returncode == 0, result.stderr
    warning = (
        f"approximate resume from {RUN}/checkpoints/last.ckpt: no rng_states: dropout and "
        "sampling draw other random numbers; no TokenDataModule: the data order restarts "
        "from the first window"
    )
    assert caplog.text.count(warning) == 1
    assert last_checkpoint(tmp_path)["global_step"] == 8


def test_a_checkpoint_without_optimizer_state_is_refused(tmp_path, cli, run):
    """Before: Lightning's KeyError 'Trying to restore optimizer state ...' with a traceback."""
    last = tmp_path / RUN / "checkpoints/last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    del ckpt["optimizer_states"]
    torch.save(ckpt, last)
    result = cli("fit", *run, "--trainer.max_steps=8", "--ckpt_path=last")
    assert result.returncode == 1
    assert last_line(result) == (
        f"error: checkpoint {RUN}/checkpoints/last.ckpt holds no optimizer state: it cannot "
        "resume a run; start a new run from its weights instead"
    )


def test_a_scheduler_without_a_closed_form_refuses_changed_settings():
    """torch's own schedulers compute each lr from the one before: their value at a step
    under new settings is unknown, so a change is refused rather than half applied."""
    from lit_gpt_scratch.errors import UserError
    from lit_gpt_scratch.train.schedules import apply_configured, configured_settings

    def build(gamma: float):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=gamma)

    optimizer, scheduler = build(0.5)
    configured = configured_settings(optimizer, scheduler)
    for _ in range(3):
        optimizer.step(), scheduler.step()
    lr = optimizer.param_groups[0]["lr"]
    assert apply_configured(optimizer, scheduler, configured, step=3) == []  # unchanged: kept
    assert optimizer.param_groups[0]["lr"] == lr
    _, other = build(0.1)
    with pytest.raises(UserError, match=r"^model.lr_scheduler StepLR cannot continue with "):
        apply_configured(optimizer, scheduler, configured_settings(optimizer, other), step=3)
