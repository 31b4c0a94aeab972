"""data.val_split: the tail rule's exact tokens, auto's choice, resume after a kill, other
settings refused, and fit on one text file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import LOREM, dir_bytes, read_split, write_text_corpus
from test_prepare import Crash, crash_at

from lit_gpt_scratch.data.prepare import META, STATE, prepare
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
BYTES_EOT = 256


def run(sources, out, **kw):
    kw.setdefault("val_fraction", 0.1)
    kw.setdefault("block_size", 8)
    kw.setdefault("shard_tokens", 64)
    kw.setdefault("prepare_workers", 0)
    sources = sources if isinstance(sources, list) else [sources]
    return prepare([str(s) for s in sources], data_dir=str(out), progress=False, **kw)


def tail_reference(tokenizer: str, docs: list[str], val_fraction: float) -> dict[str, list[int]]:
    """The documented tail rule, token by token in plain Python."""
    tok = load_tokenizer(tokenizer)
    out = {"train": [], "val": []}
    for doc in filter(None, docs):
        ids = tok.encode_ordinary(doc).tolist()
        cut = point = int(len(ids) * (1 - val_fraction))
        for j in reversed(range(point)):  # the last line end before the point
            if tok.encoding.decode_single_token_bytes(ids[j]).endswith(b"\n"):
                cut = j + 1
                break
        if cut > 0:
            out["train"] += ids[:cut] + [tok.eot_id]
        if cut < len(ids):
            out["val"] += ids[cut:] + [tok.eot_id]
    return out


def as_bytes(*parts) -> list[int]:
    """Byte ids of ``b"..."`` parts, with ``BYTES_EOT`` for each None."""
    return [t for p in parts for t in ([BYTES_EOT] if p is None else list(p))]


def test_tail_cuts_each_document_after_its_last_line_end_before_the_point(tmp_path):
    # n=8 at 0.5: point 4 ("ab\nc|d"), moved back after the "\n" at 2. n=10, no newline: cut
    # at the point, 5 (the first document's line ends do not count). n=1: point 0, all val.
    src = write_text_corpus(tmp_path / "c", ["ab\ncd\nef", "abcdefghij", "x"])
    meta = run(src, tmp_path / "out", tokenizer="bytes", val_fraction=0.5, val_split="tail",
               block_size=2)  # fmt: skip
    assert read_split(tmp_path / "out", "train").tolist() == as_bytes(b"ab\n", None, b"abcde", None)
    assert read_split(tmp_path / "out", "val").tolist() == as_bytes(
        b"cd\nef", None, b"fghij", None, b"x", None
    )
    assert meta["documents"] == {"train": 2, "val": 3}
    assert meta["val_split"] == {"rule": "tail", "why": "data.val_split: tail"}
    assert meta["settings"]["val_split"] == "tail"


TAIL_DOCS = [
    *LOREM[:20],
    "no newline in this one at all, so it is cut at the token " * 5,
    "line one\r\nline two\r\n\r\nline four, the longest of them all by quite some way\n",
    "\n\n\nblank lines first, then one long line with no newline after them" * 3,
    "",  # empty: skipped
    "tiny",
]


@pytest.mark.parametrize("tokenizer", ["gpt2", "bytes"])
def test_tail_split_is_the_reference_in_any_chunking_and_number_of_workers(
    tmp_path, monkeypatch, tokenizer
):
    src = write_text_corpus(tmp_path / "c", TAIL_DOCS)
    want = tail_reference(tokenizer, TAIL_DOCS, 0.1)
    outs = []
    for chunk_bytes, workers in ((256, 0), (256, 2), (1 << 20, 0)):
        monkeypatch.setattr("lit_gpt_scratch.data.sources.CHUNK_BYTES", chunk_bytes)
        out = tmp_path / f"out-{chunk_bytes}-{workers}"
        run(src, out, tokenizer=tokenizer, val_split="tail", prepare_workers=workers)
        for split in ("train", "val"):
            assert read_split(out, split).tolist() == want[split], (split, chunk_bytes)
        outs.append(dir_bytes(out))
    assert outs[0] == outs[1] == outs[2]


def test_auto_takes_the_tail_of_a_one_file_corpus_and_says_so(tmp_path, caplog):
    text = tmp_path / "input.txt"
    text.write_text("".join(f"{i} To be, or not to be, that is the question.\n" for i in range(40)))
    with caplog.at_level(logging.INFO):
        meta = run(text, tmp_path / "out", tokenizer="bytes")
    want = tail_reference("bytes", [text.read_text()], 0.1)
    assert read_split(tmp_path / "out", "val").tolist() == want["val"]
    assert meta["tokens"] == {"train": len(want["train"]), "val": len(want["val"])}
    assert meta["val_split"] == {"rule": "tail", "why": "auto: 1 document, fewer than 10"}
    assert meta["settings"]["val_split"] == "auto"
    assert "; val: tail of each document (auto: 1 document, fewer than 10)" in caplog.text
    assert "counting documents" not in caplog.text  # planning alone told: one file


@pytest.mark.parametrize(
    ("case", "rule", "why"),
    [
        ("60 files", "documents", "auto: 60 documents"),
        ("3 records", "tail", "auto: 3 documents, fewer than 10"),
        (
            "short val documents",
            "tail",
            "auto: the whole documents held out would make 4 tokens, fewer than one window of 9",
        ),
    ],
)
def test_auto_holds_out_whole_documents_only_when_there_are_enough(tmp_path, case, rule, why):
    if case == "60 files":
        src, docs = write_text_corpus(tmp_path / "c", LOREM), LOREM
    elif case == "3 records":  # records are counted by reading them
        docs = LOREM[:3]
        src = tmp_path / "r.jsonl"
        src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    else:  # documents 1 and 11 are the documents rule's val at 0.1: "hi" + EOT, twice
        docs = [("hi" if i % 10 == 1 else LOREM[i]) for i in range(20)]
        src = write_text_corpus(tmp_path / "c", docs)
    meta = run(src, tmp_path / "out")
    assert meta["val_split"] == {"rule": rule, "why": why}
    if rule == "tail":
        want = tail_reference("gpt2", docs, 0.1)
    else:
        gpt2 = load_tokenizer("gpt2")
        want = {"train": [], "val": []}
        for i, doc in enumerate(docs):
            want["val" if i % 10 == 1 else "train"] += gpt2.encode_ordinary(doc).tolist() + [50256]
    for split in ("train", "val"):
        assert read_split(tmp_path / "out", split).tolist() == want[split]


def test_whole_documents_of_one_file_leave_no_val_and_the_warning_names_the_tail(tmp_path, caplog):
    text = tmp_path / "book.txt"
    text.write_text("It was the best of times, it was the worst of times.\n" * 5)
    with caplog.at_level(logging.WARNING):
        meta = run(text, tmp_path / "out", val_split="documents")
    assert meta["tokens"]["val"] == 0
    assert (
        "the val split has 0 tokens, fewer than one window of 9: raise data.val_fraction, or "
        "hold out the tail of each document: data.val_split: tail"
    ) in caplog.text


def test_a_killed_auto_run_resumes_with_the_rule_it_chose(tmp_path, monkeypatch):
    src = write_text_corpus(tmp_path / "c", TAIL_DOCS)  # 24 documents, fewer than 100
    run(src, tmp_path / "ref", val_fraction=0.01)
    reference = dir_bytes(tmp_path / "ref")
    assert json.loads(reference[META])["val_split"]["rule"] == "tail"
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        crash_at(m, 30)
        with pytest.raises(Crash):
            run(src, out, val_fraction=0.01)
    state = json.loads((out / STATE).read_text())
    assert state["val_split"] == {"rule": "tail", "reason": "few", "val_tokens": 0}
    run(src, out, val_fraction=0.01)
    assert dir_bytes(out) == reference


def test_another_val_split_is_refused_like_any_other_setting(tmp_path):
    src = write_text_corpus(tmp_path / "c", LOREM)
    run(src, tmp_path / "out")
    before = dir_bytes(tmp_path / "out")
    with pytest.raises(
        UserError,
        match=r"prepared with other settings \(val_split was 'auto', now 'tail'\): use another "
        r"--data.data_dir, or delete",
    ):
        run(src, tmp_path / "out", val_split="tail")
    with pytest.raises(UserError, match=r"data.val_split must be one of auto, documents, tail"):
        run(src, tmp_path / "other", val_split="end")
    assert dir_bytes(tmp_path / "out") == before


def forget_val_split(data_dir: Path) -> None:
    """Make ``data_dir``'s meta.json one written before val_split existed."""
    meta = json.loads((data_dir / META).read_text())
    del meta["val_split"], meta["settings"]["val_split"]
    (data_dir / META).write_text(json.dumps(meta))


def test_a_directory_from_before_val_split_was_made_of_whole_documents(tmp_path):
    many = write_text_corpus(tmp_path / "many", LOREM)
    run(many, tmp_path / "many-out", val_split="documents")
    forget_val_split(tmp_path / "many-out")
    run(many, tmp_path / "many-out", val_split="documents")  # used as it is
    run(many, tmp_path / "many-out")  # auto picks whole documents for these 60: the same
    with pytest.raises(UserError, match=r"\(val_split was 'documents', now 'tail'\)"):
        run(many, tmp_path / "many-out", val_split="tail")
    one = tmp_path / "one.txt"
    one.write_text("a line of text\n" * 20)
    run(one, tmp_path / "one-out", val_split="documents")
    forget_val_split(tmp_path / "one-out")
    with pytest.raises(UserError, match=r"\(val_split was 'documents', now 'auto'\)"):
        run(one, tmp_path / "one-out")  # auto would take the tail: not what is there


def test_fit_on_one_text_file_with_the_shakespeare_char_config(tmp_path, cli):
    text = tmp_path / "input.txt"  # the config's source, relative to where fit runs
    text.write_text(
        "".join(f"CITIZEN {i}:\nWe are accounted poor citizens, the patricians good.\n\n"
                for i in range(60))
    )  # fmt: skip
    shrink = {
        "trainer.max_steps": "4",
        "trainer.val_check_interval": "2",
        "trainer.limit_val_batches": "2",
        "trainer.enable_progress_bar": "false",
        "trainer.enable_model_summary": "false",
        "model.gpt.init_args.n_layer": "1",
        "model.gpt.init_args.d_model": "32",
        "model.gpt.init_args.n_head": "2",
        "data.prepare_workers": "0",
        "data.val_windows": "8",
        "checkpoint.every_n_train_steps": "2",
        "samples.every_n_steps": "2",
        "samples.max_new_tokens": "8",
    }
    config = ["--config", str(ROOT / "configs/shakespeare-char.yaml")]
    result = cli("fit", *config, *(f"--{k}={v}" for k, v in shrink.items()))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "; val: tail of each document (auto: 1 document, fewer than 10)" in result.stderr
    meta = json.loads((tmp_path / "data/shakespeare-char" / META).read_text())
    want = tail_reference("bytes", [text.read_text()], 0.1)
    assert read_split(tmp_path / "data/shakespeare-char", "val").tolist() == want["val"]
    assert meta["tokens"] == {"train": len(want["train"]), "val": len(want["val"])}
    run_dir = tmp_path / "checkpoints/shakespeare-char/version_0"
    assert (run_dir / "checkpoints/last.ckpt").is_file()
