"""Document boundaries beside the shards, and ``data.windows: document_start``."""

from __future__ import annotations

import itertools
import json
import logging
import os

import numpy as np
import pytest
import torch
from conftest import LOREM, dir_bytes, read_split, write_text_corpus
from test_prepare import Crash, crash_at
from test_tokens import take

from lit_gpt_scratch.cli.resume_checks import check_same_windows
from lit_gpt_scratch.data.datamodule import TokenDataModule, corpus_fingerprint
from lit_gpt_scratch.data.documents import document_window_starts
from lit_gpt_scratch.data.prepare import META, prepare
from lit_gpt_scratch.data.samplers import DocumentSampler
from lit_gpt_scratch.data.windows import WindowSampler
from lit_gpt_scratch.errors import UserError

EOT = 50256
BLOCK = 8
# short documents, and long ones that need several windows of BLOCK + 1
DOCS = LOREM[:30] + ["a long document, " * (20 + i) for i in range(6)]


@pytest.fixture
def corpus(tmp_path):
    return write_text_corpus(tmp_path / "corpus", DOCS)


def run(src, out, **kw):
    options = dict(val_fraction=0.1, block_size=BLOCK, shard_tokens=64, prepare_workers=0)
    return prepare([str(src)], data_dir=str(out), progress=False, **{**options, **kw})


def assert_boundaries_are_the_eots(out):
    """Each shard's boundary file holds the offsets of its EOT tokens, scanned here."""
    meta = json.loads((out / META).read_text())
    for split in ("train", "val"):
        listed = meta["boundaries"][split]
        assert len(listed) == len(meta["splits"][split]) > 0
        for shard, entry in zip(meta["splits"][split], listed, strict=True):
            tokens = np.fromfile(out / shard["file"], dtype=meta["dtype"])
            ends = np.load(out / entry["file"])
            assert ends.dtype == np.dtype("<u8")
            assert ends.tolist() == np.flatnonzero(tokens == EOT).tolist()
            assert entry["eots"] == len(ends)
        assert sum(e["eots"] for e in listed) == meta["documents"][split]


@pytest.mark.parametrize("val_split", ["documents", "tail"])
def test_boundary_files_hold_the_eot_offsets_of_each_shard(corpus, tmp_path, val_split):
    run(corpus, tmp_path / "out", val_split=val_split)
    assert_boundaries_are_the_eots(tmp_path / "out")


def test_after_kills_and_reruns_the_boundary_files_are_the_eots(corpus, tmp_path, monkeypatch):
    run(corpus, tmp_path / "ref")
    reference = dir_bytes(tmp_path / "ref")
    for n in (3, 40, 41, 97, 150):  # shard writes and renames, boundary files' renames among them
        out = tmp_path / f"k{n}"
        with monkeypatch.context() as m:
            crash_at(m, n)
            with pytest.raises(Crash):
                run(corpus, out)
        assert not (out / META).exists()
        run(corpus, out)
        assert_boundaries_are_the_eots(out)
        assert dir_bytes(out) == reference, n


def test_a_resume_writes_the_boundary_files_an_interrupted_run_lacks(corpus, tmp_path, monkeypatch):
    """A run interrupted before boundary files existed (none beside its whole shards) resumes
    to the same directory as an uninterrupted one: the missing files come from a scan."""
    run(corpus, tmp_path / "ref")
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        crash_at(m, 120)
        with pytest.raises(Crash):
            run(corpus, out)
    removed = [p for p in out.iterdir() if ".docs.npy" in p.name]
    assert removed
    for path in removed:
        path.unlink()
    run(corpus, out)
    assert dir_bytes(out) == dir_bytes(tmp_path / "ref")


def test_a_missing_boundary_file_of_a_complete_directory_is_named(corpus, tmp_path):
    run(corpus, tmp_path / "out")
    (tmp_path / "out" / "train_000001.docs.npy").unlink()
    with pytest.raises(UserError, match=r"train_000001\.docs\.npy is missing .* prepare again"):
        run(corpus, tmp_path / "out")


# --- where document_start windows start ----------------------------------------------------------


def test_document_window_starts_by_hand():
    # documents [0, 3), [3, 13), [13, 20): EOTs at 2, 12, 19; block 4 (window 5)
    starts = document_window_starts(np.array([2, 12, 19]), 20, 5)
    # the 10-token document gives 3 windows (its 9 targets, 4 per window); the last one's
    # second window, at 17, would end past the stream (17 + 5 > 20) and is left out
    assert starts.tolist() == [0, 3, 7, 11, 13]
    # a stream whose end is not an EOT: its tail is a document too
    assert document_window_starts(np.array([2]), 12, 5).tolist() == [0, 3, 7]


def make(corpus, data_dir, **kw) -> TokenDataModule:
    options = dict(val_fraction=0.1, block_size=BLOCK, shard_tokens=64, prepare_workers=0,
                   batch_size=4, val_windows=5, windows="document_start")  # fmt: skip
    dm = TokenDataModule([str(corpus)], data_dir=str(data_dir), **{**options, **kw})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_every_window_begins_at_a_document_start_and_long_documents_give_several(corpus, tmp_path):
    dm = make(corpus, tmp_path / "data")
    train = read_split(tmp_path / "data", "train").astype(np.int64)
    doc_starts = [0, *(np.flatnonzero(train == EOT) + 1)[:-1].tolist()]
    sampler = dm.train_dataloader().batch_sampler
    assert isinstance(sampler, DocumentSampler)
    # the reference: each document's start, then every BLOCK tokens while it has targets left
    want = []
    for start, end in zip(doc_starts, [*doc_starts[1:], len(train)], strict=True):
        want += [s for s in range(start, end - 1, BLOCK) if s + BLOCK + 1 <= len(train)]
    assert sampler.starts.tolist() == want
    assert len(set(want) - set(doc_starts)) > 10  # the long documents' further windows
    ends = [*doc_starts[1:], len(train)]
    longest = max(range(len(doc_starts) - 1), key=lambda d: ends[d] - doc_starts[d])
    d, e = doc_starts[longest], ends[longest]
    assert [s for s in want if d <= s < e] == list(range(d, e - 1, BLOCK))
    assert len(range(d, e - 1, BLOCK)) > 3
    batches = list(itertools.islice(dm.train_dataloader(), sampler.batches_per_epoch))
    epoch = [row for batch in batches for row in batch.tolist()]
    seen = sorted(s for batch in sampler.epoch_batches(0).tolist() for s in batch)
    assert len(set(seen)) == len(seen) == len(epoch) and set(seen) <= set(want)
    for row, start in zip(epoch, sampler.epoch_batches(0).flatten().tolist(), strict=True):
        assert row == train[start : start + BLOCK + 1].tolist()
        if start in doc_starts:  # a window at a document's first token
            assert start == 0 or train[start - 1] == EOT


def test_val_windows_are_the_same_for_both_settings(corpus, tmp_path):
    doc = make(corpus, tmp_path / "data")
    rand = make(corpus, tmp_path / "data", windows="random")
    assert isinstance(rand.train_dataloader().batch_sampler, WindowSampler)
    both = [torch.cat(list(dm.val_dataloader())) for dm in (doc, rand)]
    assert torch.equal(*both)


def test_a_fresh_sampler_loaded_with_the_state_yields_the_same_batches():
    starts = np.sort(np.random.default_rng(0).choice(5000, 300, replace=False))

    def sampler(**kw):
        return DocumentSampler(starts, 9, 4, seed=3, rank=1, world_size=2, **kw)

    assert sampler().batches_per_epoch == 37
    reference = take(iter(sampler()), 100)
    for consumed in (0, 5, 37, 40):
        running = sampler()
        ahead = iter(running)
        for _ in range(consumed):
            next(ahead)
            running.mark_consumed()
        take(ahead, 3)  # prefetched, not trained on
        fresh = sampler()
        fresh.load_state_dict(running.state_dict())
        assert take(iter(fresh), 20) == reference[consumed : consumed + 20]
    assert all(s in starts for batch in reference for s in batch)


def test_another_windows_setting_on_resume_is_refused_in_one_line(caplog):
    doc = DocumentSampler(np.arange(0, 900, 9), 9, 4, seed=3)
    doc.mark_consumed(5)
    rand = WindowSampler(1000, 9, 4, seed=3)
    with pytest.raises(UserError) as refused:
        rand.load_state_dict(doc.state_dict())
    assert str(refused.value) == (
        "data.windows: random in the config, document_start in the checkpoint: other windows, "
        "where the saved data position means nothing; keep data.windows document_start, or set "
        "data.allow_approximate_resume: true"
    )
    old = {k: v for k, v in rand.state_dict().items() if k != "windows"}  # before data.windows
    with pytest.raises(UserError, match="data.windows: document_start in the config, random"):
        DocumentSampler(np.arange(0, 900, 9), 9, 4, seed=3).load_state_dict(old)
    approximate = WindowSampler(1000, 9, 4, seed=3, allow_approximate_resume=True)
    with caplog.at_level(logging.WARNING):
        approximate.load_state_dict(doc.state_dict())
    assert "approximate data resume: data.windows random" in caplog.text
    assert take(iter(approximate), 3) == take(iter(rand), 3)  # from its first window
    ckpt = {"TokenDataModule": {"sampler": doc.state_dict()}}
    with pytest.raises(UserError, match="data.windows: random in the config"):
        check_same_windows(ckpt, "random", allow=False)
    check_same_windows(ckpt, "random", allow=True)
    check_same_windows({"TokenDataModule": {"sampler": old}}, "random", allow=False)


def test_a_data_dir_from_before_boundary_files_trains_random_and_refuses_document_start(
    corpus, tmp_path
):
    new = make(corpus, tmp_path / "new", windows="random")
    want = take(iter(new.train_dataloader()), 5)
    out = tmp_path / "old"
    run(corpus, out)
    for path in out.glob("*.docs.npy"):
        path.unlink()
    meta = json.loads((out / META).read_text())
    fingerprint = corpus_fingerprint(meta)
    del meta["boundaries"]
    assert corpus_fingerprint(meta) == fingerprint  # an old checkpoint resumes on a new dir
    (out / META).write_text(json.dumps(meta))
    old = make(corpus, out, windows="random")  # prepare's verify accepts it as it is
    assert [b.tolist() for b in take(iter(old.train_dataloader()), 5)] == [b.tolist() for b in want]
    assert not list(out.glob("*.docs.npy"))
    with pytest.raises(UserError) as refused:
        make(corpus, out).train_dataloader()
    message = str(refused.value)
    assert "data.windows: document_start needs the document boundary files" in message
    assert message.endswith("prepare again into a new data_dir") and "\n" not in message
    assert os.path.exists(out / META)
