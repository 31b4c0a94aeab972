"""bench.lora: a base run, then full and LoRA fine-tunes of its weights, in one table."""

from __future__ import annotations

import pytest
from conftest import LOREM, write_text_corpus

from lit_gpt_scratch.bench import lora


@pytest.mark.slow
def test_the_bench_reports_both_fine_tunes_from_the_same_base(tmp_path, capsys):
    corpus = write_text_corpus(tmp_path / "corpus", LOREM * 3)
    small = [f"data.sources=[{corpus}]", f"data.data_dir={tmp_path / 'data'}",
             "data.block_size=32", "data.batch_size=4", "data.val_fraction=0.2",
             "data.val_windows=8", "model.gpt.init_args.n_layer=1",
             "model.gpt.init_args.d_model=32", "model.gpt.init_args.n_head=2",
             "trainer.limit_val_batches=2", "trainer.precision=32-true"]  # fmt: skip
    code = lora.main(["--base_steps", "4", "--steps", "4", "--workdir", str(tmp_path / "runs"),
                      "--device", "cpu", "--set", *small])  # fmt: skip
    assert code == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[-2:]]
    (full, before_full, after_full, *_), (name, before_lora, after_lora, trainable, *_) = rows
    assert full.strip() == "full fine-tune" and name.strip() == "LoRA"
    assert before_full == before_lora  # both start from the base's weights
    assert after_lora != before_lora and after_full != before_full
    # rank 8 on c_attn (32 -> 96), attn.c_proj (32 -> 32), mlp.c_proj (128 -> 32): A + B each
    assert int(trainable.replace(",", "")) == (8 * 32 + 96 * 8) + (8 * 32 + 32 * 8) + (
        8 * 128 + 32 * 8
    )
