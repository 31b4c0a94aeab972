"""The host-sync counter: reads and barriers per optimizer step, micro-batches of one step under
one key, each rank's counts written to a file at train end."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from conftest import LOREM, small_run_args, write_text_corpus

from lit_gpt_scratch.bench.host_syncs import CountHostSyncs, read_counts


def test_barriers_and_reads_of_collectives_results_are_counted_per_step(tmp_path):
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        counter = CountHostSyncs(out=str(tmp_path / "counts/fit"))
        trainer = SimpleNamespace(global_step=0, global_rank=0)
        module = SimpleNamespace(device=torch.device("cpu"))
        counter.on_train_start(trainer, module)
        total = torch.ones(())
        dist.barrier()  # before the first step: not counted
        for step, barriers in enumerate([2, 0, 1]):
            trainer.global_step = step
            counter.on_train_batch_start(trainer, module, None, 0)
            for _ in range(barriers):
                dist.barrier()
            dist.all_reduce(total)
            if step == 1:
                assert total.item() == 1.0
        counter.on_train_end(trainer, module)
        assert dist.barrier is dist.distributed_c10d.barrier  # unpatched
        assert torch.Tensor.item.__qualname__ == "TensorBase.item"
    finally:
        dist.destroy_process_group()
    assert counter.barriers == {0: 2, 1: 0, 2: 1}
    assert counter.reads == {0: 0, 1: 1, 2: 0}
    assert all(w.startswith("barrier: ") for w in counter.where[0])
    assert read_counts(tmp_path / "counts/fit-rank0.json")["barriers"] == {0: 2, 1: 0, 2: 1}


def test_micro_batches_of_one_optimizer_step_share_its_key(tmp_path, cli):
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    config = tmp_path / "count.yaml"
    out = tmp_path / "counts/fit"
    config.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: lit_gpt_scratch.bench.host_syncs.CountHostSyncs\n"
        f"      init_args: {{out: {out}}}\n"
    )
    overrides = {
        "trainer.max_steps": "5",
        "trainer.accumulate_grad_batches": "2",
        "trainer.log_every_n_steps": "4",
        "trainer.limit_val_batches": "0",
        "samples.every_n_steps": "0",
        "checkpoint.every_n_train_steps": "0",
        "throughput.every_n_steps": "4",
    }
    args = small_run_args(corpus, tmp_path / "data", **overrides)
    result = cli("fit", *args, f"--config={config}")
    assert result.returncode == 0, result.stderr
    counts = read_counts(f"{out}-rank0.json")
    assert sorted(counts["reads"]) == [0, 1, 2, 3, 4]  # 10 micro-batches, 5 optimizer steps
    for step in (0, 1, 2):
        assert counts["reads"][step] == 0, counts["where"].get(step)
    assert counts["reads"][3] > 0  # the logging step
    assert set(counts["barriers"].values()) == {0}  # one process: no barrier


def test_cuda_sync_debug_counts_each_sync_warning_and_restores_the_mode(monkeypatch):
    import warnings

    modes = ["default"]
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: modes[-1])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    counter = CountHostSyncs(cuda_sync_debug=True)
    trainer = SimpleNamespace(global_step=0, global_rank=0)
    module = SimpleNamespace(device=torch.device("cuda"))
    filters = list(warnings.filters)
    counter.on_train_start(trainer, module)
    assert modes[-1] == "warn"
    for step, syncs in enumerate([3, 0]):
        trainer.global_step = step
        counter.on_train_batch_start(trainer, module, None, 0)
        for _ in range(syncs):  # the same line each time: counted every time, not once
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
    counter.on_train_end(trainer, module)
    assert counter.syncs == {0: 3, 1: 0}
    assert modes[-1] == "default" and warnings.filters == filters


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_sync_debug_mode_sees_a_read():
    counter = CountHostSyncs(cuda_sync_debug=True)
    trainer = SimpleNamespace(global_step=0, global_rank=0)
    module = SimpleNamespace(device=torch.device("cuda"))
    x = torch.ones(4, device="cuda")
    counter.on_train_start(trainer, module)
    counter.on_train_batch_start(trainer, module, None, 0)
    (x * 2).sum().item()
    counter.on_train_end(trainer, module)
    assert counter.syncs[0] >= 1 and counter.reads[0] == 1
    assert torch.cuda.get_sync_debug_mode() == 0
