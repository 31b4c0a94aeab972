"""The training benchmarks (train, overhead, data) run end to end on the tiny config and print
their tables; a few steps only: the figures themselves live in BENCHMARKS.md."""

from __future__ import annotations

import re

import pytest

from lit_gpt_scratch.bench import data, overhead, train

FAST = ["--batch_size", "2", "--steps", "4", "--warmup", "1", "--workers", "0"]


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
        r"\| tiny \| 1\.4M \| 32-true \| off \| 2 × 256 \| [\d,]+ \| [\d,]+ \| n/a \|", row
    )


def test_overhead_compares_lightning_with_the_bare_loop(fast, capsys):
    # the config's precision by default: bf16-mixed for tiny
    assert overhead.main([*fast, "--rounds", "1"]) == 0
    [row] = table_rows(capsys.readouterr().out)
    assert re.fullmatch(
        r"\| tiny \| bf16-mixed \| off \| 2 × 256 \| [\d.,]+ \| [\d.,]+ \| [+-][\d.]+% \|", row
    )


def test_data_reports_the_loaders_share_of_a_step(fast, capsys):
    assert data.main([*fast, "--batches", "20"]) == 0
    [row] = table_rows(capsys.readouterr().out)
    assert re.fullmatch(
        r"\| tiny \| 0 \| 2 × 257 \| [\d,]+ \| [\d.]+ \| [\d.,]+ \| [\d.]+ \| [\d.]+% \|", row
    )


def test_loss_memory_rows_agree_on_loss_and_gradients(capsys):
    from lit_gpt_scratch.bench import loss_memory

    argv = ["--batch_size", "1", "--block_size", "32", "--d_model", "64", "--n_layer", "1"]
    assert loss_memory.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split("|") for line in out if re.match(r"\| (off|\d+) \| (on|off) \|", line)]
    assert len(rows) == 5
    assert len({(r[5], r[6]) for r in rows}) == 1  # the same loss and grad norm in every row
