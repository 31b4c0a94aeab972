"""The optimizer-ops benchmark runs on the tiny modern config and prints its table."""

from __future__ import annotations

from pathlib import Path

from lit_gpt_scratch.bench import optimizer_ops as bench

CONFIG = Path(__file__).resolve().parents[1] / "configs/tiny-modern.yaml"


def test_bench_optimizer_ops_counts_a_muon_step_in_a_few_hundred_ops(capsys):
    assert bench.main(["--configs", str(CONFIG)]) == 0
    out = capsys.readouterr().out
    assert "command: python -m lit_gpt_scratch.bench.optimizer_ops" in out
    assert "| config | optimizer | tensors | Muon matrices | aten ops | matmuls |" in out
    rows = {line.split(" | ")[1]: line.strip("| ").split(" | ") for line in out.splitlines()
            if line.startswith("| tiny-modern |")}  # fmt: skip
    assert set(rows) == {"AdamW", "Muon"}
    assert int(rows["AdamW"][4]) < 20  # one fused kernel and the step counts
    # 16 matrices in 4 shapes: one batched Newton-Schulz per shape (a loop over the matrices
    # took 1,507 ops and 240 matmuls)
    assert rows["Muon"][3] == "16" and int(rows["Muon"][4].replace(",", "")) < 400
    assert int(rows["Muon"][5]) == 4 * 3 * 5
