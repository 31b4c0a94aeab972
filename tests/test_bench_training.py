"""The training benchmarks (train, overhead, data) run end to end on the tiny config and print
their tables; a few steps only: the figures themselves live in BENCHMARKS.md."""

from __future__ import annotations

import re

import pytest
import torch

from lit_gpt_scratch.bench import data, overhead, train
from lit_gpt_scratch.bench.step_timing import (
    Windows,
    accumulation,
    bare_step_times,
    build_module,
    lightning_step_times,
    workload,
)

FAST = ["--batch_size", "2", "--warmup", "1", "--window", "2", "--windows", "1", "--workers", "0"]


@pytest.fixture
def fast(tmp_path):
    return [*FAST, "--data_dir", str(tmp_path / "data")]


def table_rows(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("| tiny |")]


def test_train_reports_tokens_per_second_without_inventing_mfu(fast, capsys):
    assert train.main([*fast, "--compile", "off", "--precision", "32-true"]) == 0
    out = capsys.readouterr().out
    assert "command: python -m lit_gpt_scratch.bench.train" in out and "lightning" in out
    [row] = table_rows(out)
    assert re.fullmatch(
        r"\| tiny \| 1\.4M \| 32-true \| off \| – \| 2 × 256 \| 1 \| [\d,]+ \| [\d,]+ \| n/a \|",
        row,
    )


def test_overhead_compares_lightning_with_the_bare_loop(fast, capsys):
    # the config's precision by default: bf16-mixed for tiny
    assert overhead.main([*fast, "--rounds", "1"]) == 0
    [row] = table_rows(capsys.readouterr().out)
    assert re.fullmatch(
        r"\| tiny \| bf16-mixed \| off \| 2 × 256 \| 1 \| [\d.,]+ \| [\d.,]+ \| [+-][\d.]+% \|",
        row,
    )


def test_data_reports_the_loaders_share_of_a_step(fast, capsys):
    assert data.main([*fast, "--batches", "20"]) == 0
    [row] = table_rows(capsys.readouterr().out)
    assert re.fullmatch(
        r"\| tiny \| 0 \| 2 × 257 \| 1 \| [\d,]+ \| [\d.]+ \| [\d.,]+ \| [\d.]+ \| [\d.]+% \|",
        row,
    )


@pytest.mark.slow  # five fresh processes, each building a 50k-vocabulary head
def test_loss_memory_rows_agree_on_loss_and_gradients(capsys):
    from lit_gpt_scratch.bench import loss_memory

    argv = ["--batch_size", "1", "--block_size", "32", "--d_model", "64", "--n_layer", "1"]
    assert loss_memory.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split("|") for line in out if re.match(r"\| (off|\d+) \| (on|off) \|", line)]
    assert len(rows) == 5
    assert len({(r[5], r[6]) for r in rows}) == 1  # the same loss and grad norm in every row


@pytest.mark.slow
def test_two_compiled_rows_in_one_process_both_compile(fast, capsys):
    # Dynamo's caches are reset per row: without it the rows recompile the same code objects
    # and, past the recompile limit, run eager. aot_eager: no code generation, quick on CPU.
    argv = ["--compile", "on", "--precision", "32-true", "bf16-mixed", "--compile_backend"]
    assert train.main([*fast, *argv, "aot_eager"]) == 0
    rows = table_rows(capsys.readouterr().out)
    graphs = [int(row.split("|")[5]) for row in rows]
    assert len(graphs) == 2 and all(g > 0 for g in graphs), rows


def test_the_global_batch_sets_the_accumulation():
    config = {"global_batch_size": 512, "trainer": {}}
    assert accumulation(config, 16) == 32
    assert accumulation(config, 16, global_batch_size=64) == 4  # the override wins
    assert accumulation({"trainer": {"accumulate_grad_batches": 3}}, 16) == 3
    assert accumulation({}, 16) == 1
    with pytest.raises(ValueError, match="not a multiple"):
        accumulation(config, 24)
    with pytest.raises(ValueError, match="contradicts"):
        accumulation({"global_batch_size": 64, "trainer": {"accumulate_grad_batches": 2}}, 16)


def test_both_loops_train_every_micro_batch_of_an_accumulated_step(tmp_path):
    w = workload("configs/tiny.yaml", tmp_path / "data", 2, 0, global_batch_size=4)
    assert w.accumulation == 2 and w.tokens_per_step == 4 * 256
    plan = Windows(warmup=1, size=1, count=2)  # 3 optimizer steps, 6 micro-batches
    seen = []
    module = build_module(w.config, compile=False)
    module.gpt.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    times = bare_step_times(module, w, plan, "32-true", torch.device("cpu"))
    assert len(times.step) == len(times.wait) == 2 and len(seen) == 6
    module = build_module(w.config, compile=False)
    times = lightning_step_times(module, w, plan, "32-true", "cpu")
    assert len(times.step) == 2 and module.trainer.global_step == 3
    assert module.trainer.fit_loop.epoch_loop.batch_progress.total.completed == 6
