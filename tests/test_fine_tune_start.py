"""A pretraining checkpoint starts a chat fine-tune from its weights, the vocabulary grown by
the chat tokens (new rows: the mean of the old); the fine-tune's own checkpoint resumes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import LOREM, small_run_args, write_text_corpus
from test_model import small

from lit_gpt_scratch.train.fine_tune_start import grow_vocabulary

ROOT = Path(__file__).resolve().parents[1]


def test_grown_rows_are_the_mean_of_the_old_rows_and_the_old_ones_stay():
    old = small(vocab_size=40, vocab_multiple=8)  # 40 rows
    new = small(vocab_size=44, vocab_multiple=8)  # 48 rows: 4 new ids, 4 padding
    weights = grow_vocabulary(old.state_dict(), 40, new)
    for key in ("wte.weight", "lm_head.weight"):
        grown, before = weights[key], old.state_dict()[key]
        assert grown.shape == (48, 32)
        assert torch.equal(grown[:40], before)
        assert torch.allclose(grown[40:], before.mean(dim=0).expand(8, -1))
    new.load_state_dict(weights)  # fits the grown model


def sft_args(chats: Path, data_dir: Path, **overrides) -> list[str]:
    args = {
        "data.sources": f"[{chats}]",
        "data.data_dir": str(data_dir),
        "data.tokenizer": "bytes+chat",
        "data.block_size": "32",
        "data.batch_size": "2",
        "data.val_fraction": "0.25",
        "data.val_windows": "4",
        "model.gpt.init_args.vocab_size": "261",
        "model.gpt.init_args.eot_id": "256",
        "model.gpt.init_args.n_layer": "1",
        "model.gpt.init_args.d_model": "32",
        "model.gpt.init_args.n_head": "2",
        "trainer.max_steps": "4",
        "trainer.val_check_interval": "2",
        "trainer.limit_val_batches": "2",
        "trainer.enable_progress_bar": "false",
        "trainer.enable_model_summary": "false",
        "checkpoint.every_n_train_steps": "2",
        "trainer.log_every_n_steps": "1",
        **overrides,
    }
    config = ["--config", str(ROOT / "configs/sft-tiny.yaml")]
    return [*config, *(f"--{k}={v}" for k, v in args.items())]


@pytest.mark.slow
def test_a_pretraining_checkpoint_starts_a_fine_tune_that_resumes_itself(tmp_path, cli):
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    base_args = {"data.tokenizer": "bytes", "model.gpt.init_args.vocab_size": "257"}
    base = cli("fit", *small_run_args(corpus, tmp_path / "text", **base_args))
    assert base.returncode == 0, base.stderr
    base_ckpt = tmp_path / "checkpoints/tiny/version_0/checkpoints/last.ckpt"
    chats = tmp_path / "chats.jsonl"
    records = [{"instruction": f"Say {n}.", "input": "", "output": f"{n}!"} for n in range(40)]
    chats.write_text("".join(json.dumps(r) + "\n" for r in records))

    wrong = cli("fit", *sft_args(chats, tmp_path / "c", **{"data.tokenizer": "gpt2+chat"}),
                f"--ckpt_path={base_ckpt}")  # fmt: skip
    assert wrong.returncode == 1
    assert "data.tokenizer 'gpt2+chat' is not checkpoint" in wrong.stderr

    sft = cli("fit", *sft_args(chats, tmp_path / "chat"), f"--ckpt_path={base_ckpt}")
    assert sft.returncode == 0, sft.stderr
    assert "starts a fine-tune from its weights (it was trained on data.format text" in sft.stderr
    run = tmp_path / "checkpoints/sft-tiny/version_0/checkpoints"
    first = torch.load(run / "last.ckpt", weights_only=False)
    assert first["global_step"] == 4
    assert first["hyper_parameters"]["gpt"]["init_args"]["vocab_size"] == 261

    resumed = cli("fit", *sft_args(chats, tmp_path / "chat", **{"trainer.max_steps": "6"}),
                  "--ckpt_path=last")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "starts a fine-tune" not in resumed.stderr
    assert torch.load(run / "last.ckpt", weights_only=False)["global_step"] == 6


def test_a_lora_chat_fine_tune_grows_the_base_and_reads_back_as_one_model(tmp_path, cli):
    """LoRA over a grown vocabulary: the adapters-only checkpoint records the base file's own
    weights and grows them again when read. Before, the record held the grown weights' print
    and every read of the fine-tune was refused ("whose weights have changed since")."""
    from lit_gpt_scratch.train.checkpoint_files import load_gpt

    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    base_args = {"data.tokenizer": "bytes", "model.gpt.init_args.vocab_size": "257"}
    base = cli("fit", *small_run_args(corpus, tmp_path / "text", **base_args))
    assert base.returncode == 0, base.stderr
    base_ckpt = tmp_path / "base.ckpt"
    (tmp_path / "checkpoints/tiny/version_0/checkpoints/last.ckpt").rename(base_ckpt)
    chats = tmp_path / "chats.jsonl"
    records = [{"instruction": f"Say {n}.", "input": "", "output": f"{n}!"} for n in range(40)]
    chats.write_text("".join(json.dumps(r) + "\n" for r in records))
    lora = ["--config", str(ROOT / "configs/overlays/lora.yaml")]
    sft = cli("fit", *sft_args(chats, tmp_path / "chat"), *lora, f"--ckpt_path={base_ckpt}")
    assert sft.returncode == 0, sft.stderr
    [tuned] = tmp_path.glob("checkpoints/lora/version_0/checkpoints/last.ckpt")
    loaded = load_gpt(tuned)  # the base grown to 261 ids, the adapters merged in
    assert loaded.gpt.vocab_size == 261
    base_rows = torch.load(base_ckpt, weights_only=True)["state_dict"]["gpt.wte.weight"]
    rows = loaded.gpt.wte.weight.detach()
    assert torch.equal(rows[:257], base_rows[:257])  # the embedding is frozen under LoRA
    assert torch.allclose(rows[257:261], base_rows[:257].mean(dim=0).expand(4, -1))
