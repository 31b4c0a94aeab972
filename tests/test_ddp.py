"""DDP with real processes on CPU (gloo, 2 ranks): the same training as one process with the
same global batch, checkpoints that move between the two, and gradient accumulation that
all-reduces only on the last micro-batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    LOREM,
    data_position,
    last_checkpoint,
    small_run_args,
    write_text_corpus,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TESTS = Path(__file__).resolve().parent
DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
# fp32 on CPU: two ranks sum the same numbers in another order, nothing more.
TOLERANCE = 1e-5


def fit(workdir: Path, data_dir: Path, *extra: str, devices: int = 1, batch: int = 8,
        callbacks: str = "") -> subprocess.CompletedProcess:  # fmt: skip
    """One ``fit`` in its own process(es), in ``workdir`` (runs under workdir/checkpoints)."""
    corpus = workdir.parent / "corpus"
    if not corpus.exists():  # written once: prepare refuses sources changed since
        write_text_corpus(corpus, LOREM)
    args = small_run_args(
        corpus,
        data_dir,
        **{
            "data.batch_size": str(batch),
            "trainer.precision": "32-true",
            "trainer.max_steps": "4",
            "samples.every_n_steps": "0",
            "checkpoint.every_n_train_steps": "2",
            "trainer.val_check_interval": "2",
        },
    )
    workdir.mkdir(parents=True, exist_ok=True)
    if callbacks:
        config = workdir / f"callbacks-{len(list(workdir.glob('callbacks-*')))}.yaml"
        config.write_text(f"trainer:\n  callbacks:\n{callbacks}")
        args.append(f"--config={config}")
    result = fit_processes(workdir, [*args, *(DDP if devices == 2 else []), *extra])
    assert result.returncode == 0, result.stderr[-6000:]
    return result


def fit_processes(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``python -m lit_gpt_scratch fit ARGS`` (DDP starts its second process itself)."""
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "lit_gpt_scratch", "fit", *args],
        cwd=cwd, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def record_losses(out: Path) -> str:
    return f"    - class_path: ddp_probes.RecordLosses\n      init_args: {{out: {out}}}\n"


def losses(out: Path, ranks: int = 1) -> dict[int, float]:
    """The per-step training loss, averaged over ranks (equal shares of the global batch)."""
    per_rank = [json.loads(Path(f"{out}-rank{r}.json").read_text()) for r in range(ranks)]
    return {int(step): sum(r[step] for r in per_rank) / ranks for step in per_rank[0]}


def val_losses(workdir: Path) -> list[tuple[int, float]]:
    events = EventAccumulator(str(workdir / "checkpoints/tiny/version_0"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("val/loss")]


def final_weights(workdir: Path) -> dict[str, torch.Tensor]:
    return last_checkpoint(workdir)["state_dict"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, batch 8, 4 steps: the reference every DDP run is held to."""
    root = tmp_path_factory.mktemp("ddp")
    fit(root / "single", root / "data", callbacks=record_losses(root / "single/losses"))
    return root


def test_ddp_trains_as_one_process_with_the_same_global_batch(single):
    workdir = single / "ddp"
    fit(workdir, single / "data", devices=2, batch=4, callbacks=record_losses(workdir / "losses"))
    want, got = losses(single / "single/losses"), losses(workdir / "losses", ranks=2)
    assert sorted(got) == sorted(want) == [0, 1, 2, 3]
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=TOLERANCE), step
    reference = final_weights(single / "single")
    for name, tensor in final_weights(workdir).items():
        torch.testing.assert_close(tensor, reference[name], atol=TOLERANCE, rtol=0)
    # Validation: each rank scores half of the 8 windows, and the mean over all 8 is logged.
    # Duplicated windows, or rank 0's half alone, would give another figure.
    want_val, got_val = val_losses(single / "single"), val_losses(workdir)
    assert [step for step, _ in got_val] == [step for step, _ in want_val] == [1, 3]
    for (_, got_loss), (_, want_loss) in zip(got_val, want_val, strict=True):
        assert got_loss == pytest.approx(want_loss, abs=TOLERANCE)


def test_ddp_crosses_epoch_ends_and_uneven_val_splits_in_step(single):
    """16 batches of 2 x 4 per epoch, 20 steps: both ranks cross the epoch end together.
    7 val windows: each rank scores 3, and no rank waits for a batch the other lacks."""
    workdir = single / "epochs"
    extra = ["--trainer.max_steps=20", "--trainer.val_check_interval=10", "--data.val_windows=7"]
    fit(workdir, single / "data", *extra, devices=2, batch=4)
    ckpt = last_checkpoint(workdir)
    position = data_position(ckpt)
    assert ckpt["global_step"] == 20 and (position["epoch"], position["index"]) == (1, 4)
    assert [step for step, _ in val_losses(workdir)] == [9, 19]


@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)], ids=["ddp-to-one", "one-to-ddp"])
def test_a_checkpoint_resumes_on_the_other_number_of_processes(single, first, then):
    """Steps 0-1 on ``first`` processes, steps 2-3 resumed on ``then``: the same losses and
    weights as the one-process run, within the same tolerance."""
    workdir = single / f"resume-{first}-{then}"
    fit(workdir, single / "data", "--trainer.max_steps=2", devices=first, batch=8 // first)
    fit(
        workdir,
        single / "data",
        "--ckpt_path=last",
        devices=then,
        batch=8 // then,
        callbacks=record_losses(workdir / "resumed"),
    )
    want, got = losses(single / "single/losses"), losses(workdir / "resumed", ranks=then)
    assert sorted(got) == [2, 3]
    for step in got:
        assert got[step] == pytest.approx(want[step], abs=TOLERANCE), step
    reference = final_weights(single / "single")
    for name, tensor in final_weights(workdir).items():  # the resume continued version_0
        torch.testing.assert_close(tensor, reference[name], atol=TOLERANCE, rtol=0)


def test_accumulation_all_reduces_only_on_the_last_micro_batch(single):
    """global_batch_size 16 = 2 ranks x 4 x 2 accumulated: batches 0 and 2 of each rank run
    their backward under no_sync; batches 1 and 3 all-reduce every gradient bucket."""
    workdir = single / "accumulate"
    counter = (
        "    - class_path: ddp_probes.CountGradientAllReduces\n"
        f"      init_args: {{out: {workdir / 'allreduces'}}}\n"
    )
    fit(workdir, single / "data", "--trainer.max_steps=2", "--global_batch_size=16",
        devices=2, batch=4, callbacks=counter)  # fmt: skip
    for rank in range(2):
        counts = json.loads(Path(f"{workdir / 'allreduces'}-rank{rank}.json").read_text())
        assert len(counts) == 4 and counts[0] == counts[2] == 0, counts
        assert counts[1] == counts[3] > 0, counts


def test_an_error_on_one_rank_is_one_line_on_each(single, tmp_path):
    """Rank 0 refuses a data directory made from other sources (in prepare_data, which rank 1
    waits out): its line names the problem, rank 1's says it stopped, no traceback."""
    other = tmp_path / "other"
    write_text_corpus(other, ["Another corpus."] * 30)
    # the module's data_dir was prepared from another corpus
    result = fit_processes(tmp_path, [*small_run_args(other, single / "data"), *DDP])
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, result.stderr[-3000:]
    assert any("was prepared with other settings" in line for line in errors), errors
    assert "error: another process of this run stopped: see its error above" in errors
    assert "Traceback" not in result.stderr
