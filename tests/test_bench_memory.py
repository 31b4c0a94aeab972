"""The memory benchmark runs end to end on a small file and prints its table."""

from __future__ import annotations

from lit_gpt_scratch.bench import memory as bench


def test_bench_memory_prints_flat_rows(tmp_path, capsys):
    argv = ["--data_dir", str(tmp_path / "d"), "--data_gb", "0.01", "--batches", "40"]
    assert bench.main([*argv, "--every", "20", "--workers", "2", "--block_size", "64"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 20 |") or "| 40 |" in line]
    assert len(rows) == 2 and all("MB (2)" in row for row in rows)  # two workers measured
    assert "memory limit: none" in out and "command: python -m lit_gpt_scratch.bench.memory" in out
