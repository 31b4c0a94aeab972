"""bench.curves: loss against tokens from TensorBoard logs, and tokens to reach a loss."""

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
    # 6 steps of 4 windows x 32 tokens, validation after steps 3 and 6
    args = small_run_args(corpus, tmp_path / "data", **{"samples.every_n_steps": "0"})
    assert cli("fit", *args).returncode == 0
    run = tmp_path / "checkpoints/tiny/version_0"
    curve = read_curve("tiny", run)
    assert curve.tokens.tolist() == [3 * 128, 6 * 128] and len(curve.loss) == 2
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
