"""Gradient clipping: LitGPT clips with the norm it already computed, on the device, under
fp32 and bf16-mixed with the fused AdamW (which Lightning's own bf16 clipping refuses)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import LOREM, small_run_args, write_text_corpus

SEEN: list[tuple[float, float, float]] = []  # norm before clipping; norm, max |g| after


class GradNormAfterStep(L.Callback):
    """Gradients stay in place until the next step's closure zeroes them."""

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        after = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
        largest = max(g.abs().max().item() for g in grads)
        SEEN.append((pl_module._grad_norm.item(), after, largest))


def run(tmp_path, cli, *extra):
    SEEN.clear()
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    config = tmp_path / "clip.yaml"
    config.write_text("trainer:\n  callbacks:\n    - class_path: test_clipping.GradNormAfterStep\n")
    args = small_run_args(corpus, tmp_path / "data", **{"trainer.max_steps": "3"})
    return cli("fit", *args, f"--config={config}", *extra)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gradients_are_clipped_to_the_configured_norm(tmp_path, cli, precision):
    result = run(
        tmp_path, cli, "--trainer.gradient_clip_val=0.01", f"--trainer.precision={precision}"
    )
    assert result.returncode == 0, result.stderr
    assert len(SEEN) == 3
    for before, after, _ in SEEN:
        assert before > 0.01 and after == pytest.approx(0.01, rel=1e-3)


def test_clipping_by_value(tmp_path, cli):
    args = ("--trainer.gradient_clip_val=0.0001", "--trainer.gradient_clip_algorithm=value")
    result = run(tmp_path, cli, *args)
    assert result.returncode == 0, result.stderr
    assert len(SEEN) == 3
    for before, after, largest in SEEN:
        assert after < before and largest == pytest.approx(0.0001)


def test_no_clipping_leaves_the_gradients(tmp_path, cli):
    result = run(tmp_path, cli, "--trainer.gradient_clip_val=0")
    assert result.returncode == 0, result.stderr
    assert len(SEEN) == 3 and all(before == after for before, after, _ in SEEN)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 AMP needs CUDA")
def test_fp16_clipping_with_a_fused_optimizer_is_one_line(tmp_path, cli):
    result = run(tmp_path, cli, "--trainer.gradient_clip_val=1.0", "--trainer.precision=16-mixed")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: trainer.gradient_clip_val with trainer.precision 16-mixed needs an optimizer "
        "that is not fused: set model.optimizer.init_args.fused: false"
    )
