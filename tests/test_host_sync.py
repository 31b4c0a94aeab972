"""No host-device synchronisation in a training step, except on the logging steps: the loss,
the gradient norm and the divergence guard's flag stay on the device in between."""

from __future__ import annotations

from pathlib import Path

import host_reads
import pytest
import torch
from conftest import LOREM, small_run_args, write_text_corpus


def count_reads(tmp_path, cli, *extra: str) -> host_reads.CountHostReads:
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    config = tmp_path / "count.yaml"
    config.write_text("trainer:\n  callbacks:\n    - class_path: host_reads.CountHostReads\n")
    # Logging every 4 steps; the bar on, as in a real run; no validation, sample or checkpoint
    # inside the counted steps (those read the device on purpose).
    args = small_run_args(
        corpus,
        tmp_path / "data",
        **{
            "trainer.max_steps": "9",
            "trainer.log_every_n_steps": "4",
            "trainer.enable_progress_bar": "true",
            "trainer.limit_val_batches": "0",
            "samples.every_n_steps": "0",
            "checkpoint.every_n_train_steps": "0",
            "throughput.every_n_steps": "4",
        },
    )
    result = cli("fit", *args, f"--config={config}", *extra)
    assert result.returncode == 0, result.stderr
    return host_reads.COUNTERS[-1]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_steps_between_logging_steps_never_read_the_device(tmp_path, cli, precision):
    counter = count_reads(tmp_path, cli, f"--trainer.precision={precision}")
    logging_steps = {3, 7}  # global_step 4 and 8 after them: Lightning writes the logs
    for step in range(8):  # step 8 ends the run (final logs, the bar's last refresh)
        if step in logging_steps:
            assert counter.reads[step] > 0  # the counter sees Lightning's own reads
        else:
            assert counter.reads[step] == 0, (step, counter.where[step])


def test_muon_steps_never_read_the_device_either(tmp_path, cli):
    muon = Path(__file__).resolve().parents[1] / "configs/overlays/muon.yaml"
    counter = count_reads(tmp_path, cli, f"--config={muon}")
    for step in (0, 1, 2, 4, 5, 6):
        assert counter.reads[step] == 0, (step, counter.where[step])


def test_an_optimizer_without_a_device_side_skip_reads_the_guard_flag_every_step(tmp_path, cli):
    # foreach AdamW cannot skip an update from a device flag: the guard must read it.
    counter = count_reads(tmp_path, cli, "--model.optimizer.init_args.fused=false")
    for step in range(8):
        assert any("divergence.py" in w for w in counter.where[step]), counter.where[step]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_batches_come_pinned_and_move_without_blocking(tmp_path, cli, monkeypatch):
    moves = []
    original = torch.Tensor.to

    def recording_to(tensor, *args, **kwargs):
        if tensor.dtype == torch.int64 and tensor.dim() == 2 and tensor.device.type == "cpu":
            moves.append((tensor.is_pinned(), kwargs.get("non_blocking", False)))
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    counter = count_reads(tmp_path, cli, "--trainer.accelerator=gpu", "--model.compile=false")
    assert moves and all(pinned and non_blocking for pinned, non_blocking in moves)
    for step in (0, 1, 2, 4, 5, 6):
        assert counter.reads[step] == 0, (step, counter.where[step])
