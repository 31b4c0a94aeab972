"""tokens: the stream over shards, the resumable window sampler, train and val windows."""

from __future__ import annotations

import itertools
import logging
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import LOREM, read_split, write_text_corpus
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_gpt_scratch.data.prepare import prepare
from lit_gpt_scratch.data.windows import (
    TokenStream,
    TrainWindows,
    ValWindows,
    WindowSampler,
    read_meta,
)
from lit_gpt_scratch.errors import UserError

SHARD_TOKENS = 37  # small and odd, so windows and reads cross many shard boundaries


@pytest.fixture
def data_dir(tmp_path):
    src = write_text_corpus(tmp_path / "corpus", LOREM)
    out = tmp_path / "data"
    prepare(
        [str(src)],
        data_dir=str(out),
        val_fraction=0.1,
        block_size=8,
        shard_tokens=SHARD_TOKENS,
        prepare_workers=0,
        progress=False,
    )
    return out


def open_stream(data_dir, split="train", **kw) -> TokenStream:
    return TokenStream(data_dir, split, read_meta(data_dir)["dtype"], **kw)


def take(iterable, n: int) -> list:
    return list(itertools.islice(iterable, n))


# --- TokenStream ----------------------------------------------------------------------------------


def test_reads_across_shard_boundaries_equal_the_concatenated_tokens(data_dir):
    stream, want = open_stream(data_dir), read_split(data_dir, "train").astype(np.int64)
    assert len(stream) == len(want) > 10 * SHARD_TOKENS
    for start, length in [(0, len(want)), (0, 0), (len(want), 0), (len(want) - 1, 1)]:
        assert stream.read(start, length).tolist() == want[start : start + length].tolist()
    for boundary in range(SHARD_TOKENS, len(want), SHARD_TOKENS):  # every boundary, both sides
        for start in (boundary - 9, boundary - 1, boundary):
            got = stream.read(start, 9)
            assert got.dtype == np.int64 and got.tolist() == want[start : start + 9].tolist()
    long = stream.read(5, 3 * SHARD_TOKENS + 1)  # spans four shards
    assert long.tolist() == want[5 : 5 + 3 * SHARD_TOKENS + 1].tolist()
    for start, length in [(-1, 2), (len(want) - 1, 2)]:
        with pytest.raises(IndexError, match=r"outside \[0, \d+\)"):
            stream.read(start, length)


def test_pickles_without_its_maps_and_reads_in_a_fresh_process(data_dir, tmp_path):
    stream = open_stream(data_dir)
    want = stream.read(30, 50).tolist()  # opens maps in this process
    blob = pickle.dumps(stream)
    assert b"memmap" not in blob and len(blob) < 4096
    assert pickle.loads(blob).read(30, 50).tolist() == want
    (tmp_path / "stream.pkl").write_bytes(blob)
    code = "import pickle, sys; s = pickle.load(open(sys.argv[1], 'rb')); print(s.read(30, 50))"
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "stream.pkl")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == str(np.array(want)).split()


def test_maps_are_reopened_every_n_reads_and_in_a_new_process(data_dir):
    stream = open_stream(data_dir, reopen_every=3)
    stream.read(0, 5)
    first = stream._maps[0]
    stream.read(0, 5)
    stream.read(0, 5)
    assert stream._maps[0] is first
    stream.read(0, 5)  # the 4th read re-opens
    assert stream._maps[0] is not first
    second = stream._maps[0]
    stream._pid = -1  # as a forked child sees the parent's pid
    stream.read(0, 5)
    assert stream._maps[0] is not second


def test_missing_or_resized_shard_is_named(data_dir):
    (data_dir / "train_000002.bin").unlink()
    with pytest.raises(UserError, match=r"train_000002\.bin is missing: delete .* prepare again"):
        open_stream(data_dir)
    with open(data_dir / "train_000003.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(
        UserError, match=r"train_000003\.bin has 76 bytes, meta\.json says 37 tokens of uint16"
    ):
        TokenStream(
            data_dir, "train", "uint16", shards=[{"file": "train_000003.bin", "tokens": 37}]
        )
    with pytest.raises(UserError, match=r"says dtype uint16, the reader asked for uint32"):
        TokenStream(data_dir, "val", "uint32")
    with pytest.raises(UserError, match=r"meta\.json does not exist: run prepare"):
        open_stream(data_dir / "nowhere")


# --- WindowSampler --------------------------------------------------------------------------------


def epoch_of(sampler: WindowSampler) -> list[list[int]]:
    return take(iter(sampler), sampler.batches_per_epoch)


def test_sampler_is_deterministic_for_a_seed():
    a = take(WindowSampler(10_000, 9, 4, seed=7), 1000)
    assert a == take(WindowSampler(10_000, 9, 4, seed=7), 1000)
    assert a != take(WindowSampler(10_000, 9, 4, seed=8), 1000)
    assert all(isinstance(i, int) for i in a[0])


@given(
    num_tokens=st.integers(1, 3000),
    window=st.integers(1, 40),
    batch_size=st.integers(1, 8),
    world_size=st.integers(1, 4),
    seed=st.integers(0, 2**31),
)
@settings(max_examples=150, deadline=None)
def test_each_epoch_visits_each_slot_at_most_once_split_evenly_across_ranks(
    num_tokens, window, batch_size, world_size, seed
):
    try:
        samplers = [
            WindowSampler(num_tokens, window, batch_size, seed, rank, world_size)
            for rank in range(world_size)
        ]
    except UserError as e:  # only when not even one batch per rank fits
        assert "fewer than one batch" in str(e) or "fewer than one window" in str(e)
        fits_any_offset = (num_tokens - min(window - 1, num_tokens - window)) // window
        assert num_tokens < window or fits_any_offset < batch_size * world_size
        return
    n = samplers[0].batches_per_epoch
    assert n == samplers[0].num_slots // world_size // batch_size
    stream = take(zip(*(iter(s) for s in samplers), strict=True), 3 * n)  # 3 epochs, in step
    for epoch in range(3):
        steps = stream[epoch * n : (epoch + 1) * n]
        starts = [s for step in steps for batch in step for s in batch]
        assert all(len(batch) == batch_size for step in steps for batch in step)
        assert len(set(starts)) == len(starts) == n * batch_size * world_size  # ranks disjoint
        assert len({s % window for s in starts}) == 1  # one alignment per epoch
        assert all(0 <= s and s + window <= num_tokens for s in starts)
        # Dropped: at most one slot that fits only at small offsets, and the short last batch.
        assert num_tokens // window - len(starts) <= 1 + batch_size * world_size


def test_epochs_differ_in_order_and_alignment():
    sampler = WindowSampler(100_000, 10, 8, seed=0)
    epochs = [sampler.epoch_batches(e) for e in range(6)]
    assert len({int(e[0, 0]) % 10 for e in epochs}) > 1
    assert not torch.equal(epochs[0] - epochs[0] % 10, epochs[1] - epochs[1] % 10)


@pytest.mark.parametrize("consumed", [0, 1, 7, 13, 14, 30])  # 13 batches per epoch
def test_resume_continues_exactly_where_training_stood(consumed):
    def make(**kw):
        return WindowSampler(1000, 9, 4, seed=3, rank=1, world_size=2, **kw)

    reference = take(iter(make()), consumed + 20)
    sampler = make()
    assert sampler.batches_per_epoch == 13
    ahead = iter(sampler)
    for _ in range(consumed):  # prefetching runs ahead of training by a few batches
        next(ahead)
        sampler.mark_consumed()
    take(ahead, 5)
    state = sampler.state_dict()
    assert state == {
        "epoch": consumed // 13,
        "index": consumed % 13,
        "seed": 3,
        "world_size": 2,
        "batch_size": 4,
        "windows": "random",
    }
    resumed = make()
    resumed.load_state_dict(pickle.loads(pickle.dumps(state)))
    assert take(iter(resumed), 20) == reference[consumed:]
    assert take(iter(sampler), 20) == reference[consumed:]  # re-iterating also restarts there


def test_resume_with_another_seed_is_refused_unless_approximate(caplog):
    """Another seed is another window order: the saved position means nothing in it. Before,
    the checkpoint's order went on while the config said the new seed."""
    sampler = WindowSampler(1000, 9, 4, seed=3)
    sampler.mark_consumed(5)
    other = WindowSampler(1000, 9, 4, seed=99)
    with pytest.raises(UserError, match=r"^data.seed: 99 in the config, 3 in the checkpoint"):
        other.load_state_dict(sampler.state_dict())
    approximate = WindowSampler(1000, 9, 4, seed=99, allow_approximate_resume=True)
    with caplog.at_level(logging.WARNING):
        approximate.load_state_dict(sampler.state_dict())
    assert "data.seed 99 (the checkpoint's was 3) orders the windows anew" in caplog.text
    fresh = WindowSampler(1000, 9, 4, seed=99)
    fresh.mark_consumed(5)
    assert take(iter(approximate), 10) == take(iter(fresh), 10)  # seed 99's order, batch 5 on


# 1000 tokens, windows of 9: 110 slots. An epoch of 2 x 4 uses 104 of them, of 1 x 4 or 2 x 2
# 108: the layouts' epochs end at different windows, so neither continues exactly.
@pytest.mark.parametrize(("world_size", "batch_size"), [(1, 4), (2, 2)])
def test_other_world_size_or_batch_size_is_refused(world_size, batch_size):
    saved = WindowSampler(1000, 9, 4, seed=3, rank=0, world_size=2)
    saved.mark_consumed(3)
    new = WindowSampler(1000, 9, batch_size, seed=3, rank=0, world_size=world_size)
    with pytest.raises(
        UserError,
        match=rf"is for world_size 2 and batch_size 4, this run has world_size {world_size} "
        rf"and batch_size {batch_size}, which cannot continue at the same window: keep "
        r"world_size x batch_size, or set data\.allow_approximate_resume: true",
    ):
        new.load_state_dict(saved.state_dict())


@pytest.mark.parametrize(("world_size", "batch_size"), [(1, 8), (4, 2), (8, 1)])
def test_the_same_global_batch_resumes_exactly_on_another_layout(world_size, batch_size, caplog):
    """2 ranks x 4 windows, 3 batches consumed = 24 windows: any layout of 8 windows per step
    continues at the next window of the permutation, with no option and no warning."""
    old = [WindowSampler(1000, 9, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = [s for sampler in old for batch in take(iter(sampler), 3) for s in batch]
    old[0].mark_consumed(3)
    new = [
        WindowSampler(1000, 9, batch_size, seed=3, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    with caplog.at_level(logging.WARNING):
        for sampler in new:
            sampler.load_state_dict(old[0].state_dict())
    assert "approximate" not in caplog.text
    steps_left = new[0].batches_per_epoch - new[0].index
    rest = [s for sampler in new for batch in take(iter(sampler), steps_left) for s in batch]
    assert not set(seen) & set(rest)  # nothing seen twice, nothing skipped
    whole_epoch = [s for batch in epoch_of(WindowSampler(1000, 9, 8, seed=3)) for s in batch]
    assert sorted(seen + rest) == sorted(whole_epoch)


def test_another_global_batch_that_splits_the_consumed_windows_continues_and_says_so(caplog):
    """1 x 4, 4 batches consumed = 16 windows: whole batches of 8, and both layouts' epochs
    hold 112 of the 113 slots, so batch 8 continues at the next window. It did so without a
    word, while a step count that did not split was refused."""
    old = WindowSampler(1025, 9, 4, seed=3)
    seen = [s for batch in take(iter(old), 4) for s in batch]
    old.mark_consumed(4)
    new = WindowSampler(1025, 9, 8, seed=3)
    with caplog.at_level(logging.INFO):
        new.load_state_dict(old.state_dict())
    assert (
        "resuming with 8 windows a step (world_size 1 x batch_size 8), not the checkpoint's 4: "
        "the data continues exactly, at window 16 of epoch 0"
    ) in caplog.text
    assert not set(seen) & {s for batch in take(iter(new), 10) for s in batch}
    odd = WindowSampler(1025, 9, 4, seed=3)
    odd.mark_consumed(5)  # 20 windows: not whole batches of 8
    with pytest.raises(UserError, match="cannot continue at the same window"):
        WindowSampler(1025, 9, 8, seed=3).load_state_dict(odd.state_dict())


def test_approximate_resume_continues_at_the_same_share_of_the_epoch(caplog):
    """24 windows consumed by 2 x 4 are 4.8 batches of 1 x 5: continue at batch 4."""
    old = WindowSampler(1000, 9, 4, seed=3, rank=0, world_size=2)
    old.mark_consumed(3)
    new = WindowSampler(1000, 9, 5, seed=3, allow_approximate_resume=True)
    with caplog.at_level(logging.WARNING):
        new.load_state_dict(old.state_dict())
    assert "approximate data resume: world_size 2, batch_size 4 -> 1, 5" in caplog.text
    assert (new.epoch, new.index) == (0, 4)


def test_too_small_for_one_batch_is_an_error():
    with pytest.raises(
        UserError,
        match=r"has 100 tokens: 10 windows of 9, fewer than one batch of batch_size 8 x "
        r"world_size 2",
    ):
        WindowSampler(100, 9, 8, seed=0, world_size=2)


# --- windows --------------------------------------------------------------------------------------


def test_train_windows_are_the_slices_the_sampler_names(data_dir):
    stream = open_stream(data_dir)
    want = read_split(data_dir, "train").astype(np.int64)
    windows = TrainWindows(stream, 9)
    for start in take(iter(WindowSampler(len(stream), 9, 4, seed=0)), 1)[0] + [0, len(want) - 9]:
        row = windows[start]
        assert row.dtype == torch.int64 and row.shape == (9,)
        assert row.tolist() == want[start : start + 9].tolist()


def test_val_windows_are_fixed_non_overlapping_evenly_spread_and_bounded(data_dir):
    stream = open_stream(data_dir, "val")
    want = read_split(data_dir, "val").astype(np.int64)
    n_slots = len(want) // 9
    assert n_slots > 10
    everything = ValWindows(stream, 9, max_windows=10_000)
    assert everything.slots == list(range(n_slots))
    few = ValWindows(stream, 9, max_windows=5)
    assert len(few) == 5 and few.slots == sorted(set(few.slots)) and few.slots[0] == 0
    assert max(few.slots) >= n_slots * 4 // 5  # spread through the split, not its start
    rows = [few[i] for i in range(len(few))]
    again = ValWindows(open_stream(data_dir, "val"), 9, max_windows=5)
    assert all(torch.equal(r, again[i]) for i, r in enumerate(rows))
    for slot, row in zip(few.slots, rows, strict=True):
        assert row.tolist() == want[slot * 9 : slot * 9 + 9].tolist()


def test_val_windows_split_evenly_across_ranks(data_dir):
    stream = open_stream(data_dir, "val")
    parts = [ValWindows(stream, 9, max_windows=7, rank=r, world_size=3).slots for r in range(3)]
    assert [len(p) for p in parts] == [2, 2, 2]
    assert len(set().union(*parts)) == 6
    assert set().union(*parts) <= set(ValWindows(stream, 9, max_windows=7).slots)
