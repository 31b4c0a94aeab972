"""bench.curves (loss against tokens, tokens to reach a loss) and bench.compression."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LOREM, small_run_args, write_text_corpus

from lit_gpt_scratch.bench import curves
from lit_gpt_scratch.bench.curves import Curve, read_curve, tokens_to_reach


def test_tokens_to_reach_interpolates_between_validations():
    curve = Curve("c", np.array([100.0, 200.0, 300.0]), np.array([5.0, 4.0, 3.0]))
    assert tokens_to_reach(curve, 3.5) == pytest.approx(250.0)
    assert tokens_to_reach(curve, 5.5) == 100.0  # already there at the first validation
    assert tokens_to_reach(curve, 2.0) is None


def test_a_runs_val_losses_are_read_against_the_tokens_trained_on(tmp_path, cli, capsys):
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    # 6 steps of 4 windows x 32 tokens, validation before step 1 and after steps 3 and 6
    args = small_run_args(corpus, tmp_path / "data", **{"samples.every_n_steps": "0"})
    assert cli("fit", *args).returncode == 0
    run = tmp_path / "checkpoints/tiny/version_0"
    curve = read_curve("tiny", run)
    assert curve.tokens.tolist() == [0, 3 * 128, 6 * 128] and len(curve.loss) == 3
    assert curves.main(["--runs", f"a={run}", f"b={run}"]) == 0
    out = capsys.readouterr().out
    # the reference reaches its own final loss at its last validation: 1.00x of its tokens
    for name in ("a", "b"):
        assert f"| {name} | {curve.loss[-1]:.4f} | 0.00M | 1.00x |" in out


def test_the_plot_is_a_png(tmp_path, cli):
    pytest.importorskip("matplotlib")
    curve = Curve("c", np.array([1e6, 2e6]), np.array([5.0, 4.0]))
    out = tmp_path / "plots/c.png"
    curves.plot([curve, curve], "val/loss", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compression_counts_bytes_per_token_on_held_out_and_other_text(tmp_path, capsys):
    from lit_gpt_scratch.bench import compression

    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    (tmp_path / "other.txt").write_text("日本語のテキスト", encoding="utf-8")  # 24 bytes
    args = ["--tokenizers", "bytes", "--sources", str(corpus), "--val_fraction", "0.2",
            "--texts", f"ja={tmp_path / 'other.txt'}"]  # fmt: skip
    assert compression.main(args) == 0
    out = capsys.readouterr().out
    held_out = compression.held_out_documents([str(corpus)], 0.2)
    assert len(held_out) == 12 and held_out[0] == LOREM[1]  # documents 1, 6, 11, ...
    size = sum(len(t.encode()) for t in held_out)
    assert f"| `bytes` | 257 | 1.00 ({size:,} tokens) | 1.00 (24 tokens) |" in out
    assert compression.main(["--texts", f"none={tmp_path / 'missing*.txt'}"]) == 1
