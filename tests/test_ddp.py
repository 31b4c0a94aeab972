"""DDP with real processes on CPU (gloo, 2 ranks): the same training as one process with the
same global batch, checkpoints that move between the two, and gradient accumulation that
all-reduces only on the last micro-batch."""

from __future__ import annotations

import pytest
import torch
from conftest import data_position, last_checkpoint, small_run_args, write_text_corpus
from gloo_runs import (
    DDP,
    TOLERANCE,
    final_weights,
    fit,
    fit_processes,
    losses,
    probe,
    rank_records,
    record_losses,
    samples,
    val_losses,
)

from lit_gpt_scratch.bench.host_syncs import read_counts


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
    assert [step for step, _ in got_val] == [step for step, _ in want_val] == [0, 1, 3]
    for (_, got_loss), (_, want_loss) in zip(got_val, want_val, strict=True):
        assert got_loss == pytest.approx(want_loss, abs=TOLERANCE)


@pytest.mark.slow
def test_ddp_crosses_epoch_ends_and_uneven_val_splits_in_step(single):
    """16 batches of 2 x 4 per epoch, 20 steps: both ranks cross the epoch end together.
    7 val windows: each rank scores 3, and no rank waits for a batch the other lacks. Rank 0
    samples text alone at steps 10 and 20 while rank 1 waits in the next all-reduce."""
    workdir = single / "epochs"
    extra = ["--trainer.max_steps=20", "--trainer.val_check_interval=10", "--data.val_windows=7",
             "--samples.every_n_steps=10"]  # fmt: skip
    fit(workdir, single / "data", *extra, devices=2, batch=4)
    ckpt = last_checkpoint(workdir)
    position = data_position(ckpt)
    assert ckpt["global_step"] == 20 and (position["epoch"], position["index"]) == (1, 4)
    assert [step for step, _ in val_losses(workdir)] == [0, 9, 19]
    texts = samples(workdir)
    assert sorted(texts) == [10, 20] and all(text.strip("`\n ") for text in texts.values())


@pytest.mark.slow
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


@pytest.mark.slow
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
    for record in rank_records(workdir / "allreduces", ranks=2):
        counts = record["counts"]
        assert len(counts) == 4 and counts[0] == counts[2] == 0, counts
        assert counts[1] == counts[3] > 0, counts
        # strategy ddp: gradients are views into the buckets, not a second gradient-sized copy
        assert record["bucket_view"] is True


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_ddp_step_neither_waits_at_a_barrier_nor_reads_the_device_between_logging_steps(
    single,
):
    """2 ranks, 2 micro-batches accumulated per step, logging every 4 steps. Between logging
    steps no rank calls barrier() and none reads a tensor to the host: the guard's flag is not
    reduced (averaged gradients give every rank the same norm), and the ranks agree on
    signals only at logging steps, once per optimizer step, not once per micro-batch (Lightning's
    strategy.reduce made a barrier each step and a read on every micro-batch of some)."""
    workdir = single / "host-syncs"
    counter = probe("CountHostSyncs", workdir / "counts").replace(
        "ddp_probes.CountHostSyncs", "lit_gpt_scratch.bench.host_syncs.CountHostSyncs"
    )
    quiet = ["--trainer.max_steps=9", "--trainer.log_every_n_steps=4", "--global_batch_size=16",
             "--trainer.limit_val_batches=0", "--checkpoint.every_n_train_steps=0",
             "--throughput.every_n_steps=4", "--trainer.enable_progress_bar=true"]  # fmt: skip
    fit(workdir, single / "data", *quiet, devices=2, batch=4, callbacks=counter)
    for rank in range(2):
        counts = read_counts(f"{workdir / 'counts'}-rank{rank}.json")
        for step in range(8):  # global_step 4 and 8 follow steps 3 and 7: the logging steps
            where = counts["where"].get(step)
            assert counts["barriers"][step] == 0, (rank, step, where)
            signal_checks = sum("preemption.py" in w for w in where or [])
            if step in (3, 7):
                assert signal_checks == 1, (rank, step, where)  # once, not per micro-batch
            else:
                assert counts["reads"][step] == 0, (rank, step, where)
