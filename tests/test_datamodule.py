"""TokenDataModule: prepare on first use, batches from real slices, resume, one-line refusals."""

from __future__ import annotations

import itertools
import os
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from conftest import LOREM, read_split, write_text_corpus
from test_tokenizer import write_big_vocab

from lit_gpt_scratch.data.datamodule import TokenDataModule, check_against_model, corpus_fingerprint
from lit_gpt_scratch.data.windows import WindowSampler
from lit_gpt_scratch.errors import UserError

BLOCK = 8


@pytest.fixture
def corpus(tmp_path):
    return write_text_corpus(tmp_path / "corpus", LOREM)


def make(corpus, data_dir, **kw) -> TokenDataModule:
    options = dict(
        val_fraction=0.1,
        block_size=BLOCK,
        shard_tokens=64,
        prepare_workers=0,
        batch_size=4,
        val_windows=5,
    )
    return TokenDataModule([str(corpus)], data_dir=str(data_dir), **{**options, **kw})


@pytest.fixture
def prepared(corpus, tmp_path):
    """A DataModule whose data_dir is prepared and set up for fit."""
    dm = make(corpus, tmp_path / "data")
    dm.prepare_data()
    dm.setup("fit")
    return dm


def fake_trainer(rank=0, world_size=1, gpt=None, injects_sampler=False):
    return SimpleNamespace(
        global_rank=rank,
        world_size=world_size,
        lightning_module=SimpleNamespace(gpt=gpt) if gpt else None,
        _accelerator_connector=SimpleNamespace(use_distributed_sampler=injects_sampler),
    )


def test_prepare_data_creates_missing_data_then_verifies_it(corpus, tmp_path):
    dm = make(corpus, tmp_path / "data")
    dm.prepare_data()
    assert (tmp_path / "data" / "meta.json").is_file()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").iterdir()}
    dm.prepare_data()  # a complete directory: nothing rewritten
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").iterdir()} == before
    with pytest.raises(UserError, match=r"prepared with other settings \(val_fraction was 0.1"):
        make(corpus, tmp_path / "data", val_fraction=0.2).prepare_data()


def test_hyperparameters_record_the_data_settings(corpus, tmp_path):
    dm = make(corpus, tmp_path / "data", seed=5)
    assert dm.hparams.tokenizer == "gpt2" and dm.hparams.sources == [str(corpus)]
    assert dm.hparams.block_size == BLOCK and dm.hparams.seed == 5
    assert TokenDataModule().hparams.sources == ["stdlib"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_batches_are_real_slices_of_the_train_stream(prepared, tmp_path, num_workers):
    prepared.hparams.num_workers = num_workers
    train = read_split(tmp_path / "data", "train").astype(np.int64)
    assert prepared.meta["dtype"] == "uint16" and prepared.meta["tokens"]["train"] == len(train)
    batches = list(itertools.islice(prepared.train_dataloader(), 12))  # past one epoch
    expected = itertools.islice(WindowSampler(len(train), BLOCK + 1, 4, seed=1234), 12)
    for batch, starts in zip(batches, expected, strict=True):
        assert batch.dtype == torch.int64 and batch.shape == (4, BLOCK + 1)
        for row, start in zip(batch.tolist(), starts, strict=True):
            assert row == train[start : start + BLOCK + 1].tolist()  # row[1:] continues row[:-1]


def test_val_batches_are_the_same_fixed_windows_every_time(prepared, tmp_path):
    val = read_split(tmp_path / "data", "val").astype(np.int64)
    first = torch.cat(list(prepared.val_dataloader()))
    assert first.shape == (5, BLOCK + 1) and first.dtype == torch.int64
    assert torch.equal(first, torch.cat(list(prepared.val_dataloader())))
    assert torch.equal(first, torch.cat(list(prepared.test_dataloader())))
    assert first[0].tolist() == val[: BLOCK + 1].tolist()


def test_state_dict_resumes_at_the_first_unconsumed_batch(corpus, tmp_path):
    reference = make(corpus, tmp_path / "data")
    reference.prepare_data()
    reference.setup("fit")
    want = list(itertools.islice(reference.train_dataloader(), 10))

    run = make(corpus, tmp_path / "data", num_workers=2)
    run.setup("fit")
    loader = iter(run.train_dataloader())  # workers prefetch several batches ahead
    for _ in range(4):
        next(loader)
        run.mark_batch_consumed()
    state = run.state_dict()
    assert state == {
        "data_dir": str(tmp_path / "data"),
        "corpus": corpus_fingerprint(run.meta),
        "sampler": {
            "epoch": 0,
            "index": 4,
            "seed": 1234,
            "world_size": 1,
            "batch_size": 4,
            "windows": "random",
        },  # fmt: skip
    }

    before_loader = make(corpus, tmp_path / "data")  # Lightning restores before the loaders
    before_loader.setup("fit")
    before_loader.load_state_dict(state)
    assert before_loader.state_dict() == state
    after_loader = make(corpus, tmp_path / "data")
    after_loader.setup("fit")
    after_loader.train_dataloader()
    after_loader.load_state_dict(state)
    for dm in (before_loader, after_loader):
        got = list(itertools.islice(dm.train_dataloader(), 6))
        assert all(torch.equal(a, b) for a, b in zip(got, want[4:], strict=True))


def test_ranks_read_disjoint_windows_and_need_lightning_to_keep_out(prepared):
    prepared.trainer = fake_trainer(rank=0, world_size=2, injects_sampler=True)
    with pytest.raises(UserError, match=r"set trainer.use_distributed_sampler: false"):
        prepared.train_dataloader()
    rows = []
    for rank in range(2):
        prepared.trainer = fake_trainer(rank=rank, world_size=2)
        prepared.sampler = None  # a fresh process per rank
        rows.append(next(iter(prepared.train_dataloader())))
        val = torch.cat(list(prepared.val_dataloader()))
        assert len(val) == 2  # 5 windows: 2 each, one dropped
    assert not {tuple(r) for r in rows[0].tolist()} & {tuple(r) for r in rows[1].tolist()}


# --- refusals: one line naming both sides ---------------------------------------------------------


def test_tokenizer_whose_dtype_differs_from_the_data_is_refused(prepared, corpus, tmp_path):
    write_big_vocab(tmp_path / "big.tiktoken")
    dm = make(corpus, tmp_path / "data", tokenizer=str(tmp_path / "big.tiktoken"))
    with pytest.raises(
        UserError,
        match=r"holds uint16 tokens of a 50257-id vocabulary \(tokenizer 'gpt2'\), "
        r"data.tokenizer '.*big.tiktoken' needs uint32 and \d+: use another data.data_dir",
    ):
        dm.setup("fit")


def test_splits_smaller_than_one_window_are_refused(prepared, corpus, tmp_path):
    big_window = make(corpus, tmp_path / "data", block_size=100_000)  # data made for BLOCK
    with pytest.raises(
        UserError,
        match=r"the train split of .*data has \d+ tokens, fewer than one window of "
        r"block_size \+ 1 = 100001",
    ):
        big_window.setup("fit")
    src = write_text_corpus(tmp_path / "short_val", [" ".join(LOREM), "hi"])
    small_val = make(src, tmp_path / "small_val", val_fraction=0.5, val_split="documents")
    small_val.prepare_data()
    for stage in ("fit", "validate", "test"):
        with pytest.raises(
            UserError,
            match=r"the val split of .* has 2 tokens, fewer than one window of block_size \+ 1 "
            r"= 9: raise data.val_fraction, or hold out the tail of each document: "
            r"data.val_split: tail$",
        ):
            small_val.setup(stage)
    small_val.setup("predict")  # no val needed


def test_model_checks_vocab_and_block_size(prepared):
    meta = prepared.meta
    check_against_model(meta, BLOCK, SimpleNamespace(vocab_size=50304, block_size=BLOCK))
    with pytest.raises(
        UserError,
        match=r"the data has vocab_size 50257 \(tokenizer 'gpt2'\), more than "
        r"model.gpt.vocab_size 1000: raise it to 50257",
    ):
        check_against_model(meta, BLOCK, SimpleNamespace(vocab_size=1000, block_size=BLOCK))
    with pytest.raises(
        UserError, match=r"data.block_size 8 differs from model.gpt.block_size 16: set them equal"
    ):
        check_against_model(meta, BLOCK, SimpleNamespace(vocab_size=50257, block_size=16))


def test_setup_checks_the_attached_model(prepared):
    prepared.trainer = fake_trainer(gpt=SimpleNamespace(vocab_size=50257, block_size=16))
    with pytest.raises(UserError, match=r"data.block_size 8 differs from model.gpt.block_size 16"):
        prepared.setup("fit")
    prepared.trainer = fake_trainer(gpt=SimpleNamespace(vocab_size=50257, block_size=BLOCK))
    prepared.setup("fit")


# --- with a real Trainer: checkpoints carry the data position ------------------------------------


class Recorder(L.LightningModule):
    """Trains nothing; records each batch and marks it consumed as LitGPT will."""

    def __init__(self):
        super().__init__()
        self.gpt = SimpleNamespace(vocab_size=50257, block_size=BLOCK)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.trainer.datamodule.mark_batch_consumed()
        self.seen.append(batch.clone())
        return self.weight.square().sum()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(dm, max_steps, checkpoint_dir, ckpt_path=None):
    module = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=checkpoint_dir, every_n_train_steps=3, save_top_k=-1
            )
        ],
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module.seen


def test_resume_from_a_mid_run_checkpoint_sees_the_uninterrupted_batches(corpus, tmp_path):
    whole = fit(make(corpus, tmp_path / "data", num_workers=2), 7, tmp_path / "ckpt")
    checkpoint = tmp_path / "ckpt" / "epoch=0-step=3.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["TokenDataModule"]["sampler"]["index"] == 3  # consumed, not prefetched
    assert saved["datamodule_hyper_parameters"]["tokenizer"] == "gpt2"
    resumed = fit(make(corpus, tmp_path / "data"), 7, tmp_path / "ckpt", ckpt_path=checkpoint)
    assert len(resumed) == 4
    assert all(torch.equal(a, b) for a, b in zip(resumed, whole[3:], strict=True))
    assert len({tuple(b.flatten().tolist()) for b in whole}) == 7
    assert os.path.exists(tmp_path / "ckpt" / "epoch=0-step=6.ckpt")


@pytest.mark.parametrize("per_node", [True, False])
def test_prepare_per_node_chooses_where_lightning_runs_prepare(per_node):
    # True: local rank 0 of each node (node-local disks); False: global rank 0 (shared storage)
    assert TokenDataModule(prepare_per_node=per_node).prepare_data_per_node is per_node


def test_token_data_module_offers_the_interface_lit_gpt_asks_of_its_data(prepared):
    """LitGPT reads the byte counts (val/bpb) and counts consumed batches (exact resume)
    through train.module.TokenData; a data module that stops offering it loses both."""
    from lit_gpt_scratch.train.module import TokenData

    assert isinstance(prepared, TokenData)
    token_bytes = prepared.token_bytes()
    assert token_bytes.shape == (prepared.meta["vocab_size"],) and int(token_bytes.min()) >= 0
