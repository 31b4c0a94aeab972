"""data.format chat: conversation sources, best-fit packing, prepare's windows and mask, the
data module's batches, exact resume, ranks, and bad input in one line."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_model import small

from lit_gpt_scratch.data.chat_prepare import prepare_chat
from lit_gpt_scratch.data.chat_template import ChatTemplate
from lit_gpt_scratch.data.datamodule import TokenDataModule
from lit_gpt_scratch.data.packing import best_fit
from lit_gpt_scratch.data.prepare import prepare_from_config
from lit_gpt_scratch.data.stdlib_chat import stdlib_conversations
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer
from lit_gpt_scratch.train.module import inputs_and_targets

BLOCK = 63  # windows of 64 tokens
TOKENIZER = "bytes+chat"
EOT = 256


def conversation(n: int) -> dict:
    if n % 3 == 2:  # every third an instruction record
        return {"instruction": f"Say {n}.", "input": "" if n % 2 else "now", "output": f"{n}!"}
    return {
        "messages": [
            {"role": "system", "content": "Count."},
            {"role": "user", "content": f"After {n}?"},
            {"role": "assistant", "content": f"{n + 1}."},
        ]
    }


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def chats(tmp_path):
    return write_jsonl(tmp_path / "chats.jsonl", [conversation(n) for n in range(40)])


def options(chats, data_dir, **kw) -> dict:
    return dict(
        sources=[str(chats)], tokenizer=TOKENIZER, data_dir=str(data_dir), val_fraction=0.25,
        block_size=BLOCK, shard_tokens=300, **kw,
    )  # fmt: skip


def test_best_fit_puts_each_item_in_the_tightest_bin_that_holds_it():
    assert best_fit([6, 5, 4, 3, 2, 1], 10) == [[0, 2], [1, 3, 4], [5]]
    assert best_fit([10, 10], 10) == [[0], [1]]
    with pytest.raises(ValueError):
        best_fit([11], 10)


def read_windows(data_dir: Path, split: str, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate([np.fromfile(data_dir / s["file"], "<u2") for s in meta["splits"][split]])
    mask = np.concatenate([np.fromfile(data_dir / s["file"], "u1") for s in meta["masks"][split]])
    return ids.reshape(-1, meta["window"]), mask.reshape(-1, meta["window"])


def test_prepare_packs_whole_conversations_and_their_masks(chats, tmp_path):
    meta = prepare_chat(**options(chats, tmp_path / "d"))
    assert meta["conversations"]["train_conversations"] == 30
    assert meta["conversations"]["val_conversations"] == 10  # every 4th
    template = ChatTemplate(load_tokenizer(TOKENIZER))
    lines = [json.loads(line) for line in chats.read_text().splitlines()]
    from lit_gpt_scratch.data.chat_sources import to_messages

    rendered = [template.render(to_messages(r, "x")) for r in lines]
    train = [rendered[i] for i in range(40) if i % 4 != 3]
    ids, mask = read_windows(tmp_path / "d", "train", meta)
    assert ids.shape[0] == meta["windows"]["train"] < 30  # several conversations a window
    # Each window is whole conversations (each opening with EOT) and then EOT padding; the
    # conversations, read back out of the windows, are exactly the rendered ones.
    found = []
    for row_ids, row_mask in zip(ids, mask, strict=True):
        starts = [k for k in range(len(row_ids)) if row_ids[k] == EOT]
        assert starts[0] == 0
        for a, b in itertools.pairwise([*starts, len(row_ids)]):
            if b - a > 1:
                found.append((row_ids[a:b].tolist(), row_mask[a:b].tolist()))
            else:
                assert row_mask[a] == 0  # padding is never a target
    expected = sorted((i.tolist(), m.astype(int).tolist()) for i, m in train)
    assert sorted(found) == expected
    assert meta["targets"]["train"] == int(mask.sum())


def test_prepare_is_deterministic_and_a_rerun_is_a_no_op(chats, tmp_path):
    prepare_chat(**options(chats, tmp_path / "a"))
    prepare_chat(**options(chats, tmp_path / "b"))
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        if name != "meta.json":
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    before = (tmp_path / "a" / "meta.json").stat().st_mtime_ns
    prepare_chat(**options(chats, tmp_path / "a"))
    assert (tmp_path / "a" / "meta.json").stat().st_mtime_ns == before
    with pytest.raises(
        UserError, match=r"prepared with other settings \(block_size was 63, now 31"
    ):
        prepare_chat(**{**options(chats, tmp_path / "a"), "block_size": 31})


def test_a_killed_prepare_is_redone_from_the_start(chats, tmp_path):
    prepare_chat(**options(chats, tmp_path / "a"))
    out = tmp_path / "b"
    prepare_chat(**options(chats, out))
    (out / "meta.json").unlink()  # as if killed before its last write
    (out / "val_000000.bin").write_bytes(b"half")
    prepare_chat(**options(chats, out))
    assert (out / "val_000000.bin").read_bytes() == (tmp_path / "a" / "val_000000.bin").read_bytes()


def test_overlong_conversations_are_truncated_or_skipped_and_counted(chats, tmp_path):
    records = [conversation(n) for n in range(8)]
    records[1] = {"instruction": "Repeat.", "input": "", "output": "x" * 200}
    records[5] = {"instruction": "y" * 200, "input": "", "output": "z"}  # no target within
    path = write_jsonl(tmp_path / "long.jsonl", records)
    cut = prepare_chat(**options(path, tmp_path / "t"))
    assert cut["conversations"]["truncated"] == 1 and cut["conversations"]["skipped"] == 1
    skip = prepare_chat(**options(path, tmp_path / "s", overlong="skip"))
    assert skip["conversations"]["truncated"] == 0 and skip["conversations"]["skipped"] == 2
    ids, _ = read_windows(tmp_path / "t", "train", cut)
    assert any(row.tolist().count(ord("x")) > 40 for row in ids)  # the cut one, kept


BAD_RECORDS = {
    "missing_role": ({"messages": [{"content": "hi"}]}, r"line 2: message 1 has no 'role'"),
    "unknown_role": (
        {"messages": [{"role": "bot", "content": "hi"}]},
        r"line 2: message 1 has role 'bot', not one of system, user, assistant",
    ),
    "empty_assistant": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
        r"line 2: message 2 is an empty assistant turn",
    ),
    "no_assistant": (
        {"messages": [{"role": "user", "content": "hi"}]},
        r"line 2: no assistant message",
    ),
    "neither_shape": ({"text": "hi"}, r"line 2 is neither a conversation .* nor an instruction"),
    "content_not_text": (
        {"messages": [{"role": "user", "content": 3}]},
        r"line 2: message 1 \(user\) has no text 'content'",
    ),
}


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_bad_records_are_one_line_naming_the_line_and_leave_nothing(case, tmp_path):
    record, message = BAD_RECORDS[case]
    path = write_jsonl(tmp_path / "bad.jsonl", [conversation(0), record])
    with pytest.raises(UserError, match=message):
        prepare_chat(**options(path, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bad_sources_and_tokenizers_are_one_line(chats, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"messages": [\n')
    with pytest.raises(UserError, match=r"bad.jsonl: line 1 is not valid JSON"):
        prepare_chat(**options(tmp_path / "bad.jsonl", tmp_path / "o"))
    with pytest.raises(UserError, match=r"chat source stdlib does not exist: give stdlib-chat"):
        prepare_chat(**{**options(chats, tmp_path / "o"), "sources": ["stdlib"]})
    with pytest.raises(UserError, match=r"has no <\|system\|> token: use 'bytes\+chat'"):
        prepare_chat(**{**options(chats, tmp_path / "o"), "tokenizer": "bytes"})
    assert not (tmp_path / "o").exists()


def test_text_and_chat_data_dirs_are_not_mixed_up(chats, tmp_path):
    prepare_from_config({**options(chats, tmp_path / "chat"), "format": "chat"})
    with pytest.raises(UserError, match=r"holds chat windows, not text shards: set data.format"):
        prepare_from_config({**options(chats, tmp_path / "chat"), "tokenizer": "bytes"})


def test_stdlib_chat_pairs_functions_with_their_source_and_docstring():
    found = {}
    for _, messages in itertools.islice(stdlib_conversations(), 4000):
        found.setdefault(messages[0]["content"].split("`")[1], messages)
    write = next(m for k, m in found.items() if k.startswith("insort_left("))
    assert write[0]["content"].startswith("Write a function `insort_left(a, x, lo=0, hi=None")
    assert write[1]["content"].startswith("def insort_left(")
    ask = found["bisect.insort_left"]
    assert ask[1]["content"].startswith("Insert item x in list a")


# --- the data module --------------------------------------------------------------------------


def make(chats, data_dir, **kw) -> TokenDataModule:
    o = {**options(chats, data_dir), "batch_size": 2, "val_windows": 5, **kw}
    return TokenDataModule(format="chat", **o)


def fake_trainer(rank=0, world_size=1, gpt=None):
    return SimpleNamespace(
        global_rank=rank, world_size=world_size,
        lightning_module=SimpleNamespace(gpt=gpt) if gpt else None,
        _accelerator_connector=SimpleNamespace(use_distributed_sampler=False),
    )  # fmt: skip


def test_batches_are_ids_and_masks_of_whole_windows_and_resume_exactly(chats, tmp_path):
    reference = make(chats, tmp_path / "d")
    reference.prepare_data()
    reference.setup("fit")
    want = list(itertools.islice(reference.train_dataloader(), 8))
    assert want[0].shape == (2, 2, BLOCK + 1) and want[0].dtype == torch.int64
    x, y = inputs_and_targets(want[0])
    assert torch.all(x[:, 0] == EOT) and (y != -100).sum() > 0

    run = make(chats, tmp_path / "d", num_workers=2)
    run.setup("fit")
    loader = iter(run.train_dataloader())
    for _ in range(3):
        next(loader)
        run.mark_batch_consumed()
    state = run.state_dict()
    assert state["sampler"]["windows"] == "packed" and state["sampler"]["index"] == 3
    resumed = make(chats, tmp_path / "d")
    resumed.setup("fit")
    resumed.load_state_dict(state)
    got = list(itertools.islice(resumed.train_dataloader(), 5))
    assert all(torch.equal(a, b) for a, b in zip(got, want[3:], strict=True))
    val = list(resumed.val_dataloader())
    assert torch.equal(torch.cat(val), torch.cat(list(resumed.val_dataloader())))
    assert val[0].shape[1:] == (2, BLOCK + 1)


def test_ranks_read_disjoint_windows(chats, tmp_path):
    dm = make(chats, tmp_path / "d", batch_size=1)
    dm.prepare_data()
    dm.setup("fit")
    rows = []
    for rank in range(2):
        dm.trainer = fake_trainer(rank=rank, world_size=2)
        dm.sampler = None
        rows.append({tuple(w[0, 0].tolist()) for w in itertools.islice(dm.train_dataloader(), 2)})
    assert not rows[0] & rows[1]


def test_packing_needs_the_document_mask(chats, tmp_path):
    dm = make(chats, tmp_path / "d")
    dm.prepare_data()
    dm.trainer = fake_trainer(gpt=small(vocab_size=261, block_size=BLOCK))
    with pytest.raises(UserError, match=r"set document_mask: true and eot_id: 256, or data.pack"):
        dm.setup("fit")
    dm.trainer = fake_trainer(
        gpt=small(vocab_size=261, block_size=BLOCK, document_mask=True, eot_id=EOT)
    )
    dm.setup("fit")
    unpacked = make(chats, tmp_path / "u", pack=False)
    unpacked.prepare_data()
    unpacked.trainer = fake_trainer(gpt=small(vocab_size=261, block_size=BLOCK))
    unpacked.setup("fit")
    assert unpacked.meta["windows"]["train"] == 30  # one conversation a window


def test_text_options_are_refused_with_chat(chats):
    with pytest.raises(UserError, match=r"data.windows document_start is for text"):
        TokenDataModule([str(chats)], format="chat", windows="document_start")
    with pytest.raises(UserError, match=r"a mixture is text's only"):
        TokenDataModule([{"path": str(chats), "weight": 1.0, "name": "a"}], format="chat")


def test_show_batch_prints_the_packed_windows_training_draws(chats, tmp_path, cli):
    dm = make(chats, tmp_path / "d")
    dm.prepare_data()
    dm.setup("fit")
    config = Path(__file__).resolve().parents[1] / "configs/sft-tiny.yaml"
    o = options(chats, tmp_path / "d")
    overrides = [f"--data.{k}={v}" for k, v in o.items() if k != "sources"]
    result = cli("show_batch", f"--config={config}", f"--data.sources=[{chats}]", *overrides,
                 "--data.batch_size=2", "--step=1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    starts = [int(line.split("train tokens ")[1].split("..")[0].replace(",", ""))
              for line in result.stdout.splitlines() if line.startswith("===")]  # fmt: skip
    assert starts == dm._new_sampler(0, 1).batch_at(1).tolist()
    assert all(s % (BLOCK + 1) == 0 for s in starts)
