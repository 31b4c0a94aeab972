"""train_tokenizer: a BPE learned from the sources, written as a tiktoken ranks file that
prepare reads, decodes exactly, reserves special tokens at the top, and is deterministic."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from conftest import read_split, write_text_corpus

from lit_gpt_scratch.cli.main import main
from lit_gpt_scratch.data.prepare import prepare
from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.tokenizer.encodings import EOT, load_tokenizer
from lit_gpt_scratch.tokenizer.training import train_tokenizer

CODE = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i, i * i)  # squares 1234567\n",
    "import os\n\n\ndef main():\n    return os.getcwd()\n",
] * 8
HELD_OUT = "Überprüfung: ничего 日本語のテキスト 👩‍👩‍👧 e\u0301 <|endoftext|>\n\tx = 12345678\n"


@pytest.fixture
def corpus(tmp_path):
    return write_text_corpus(tmp_path / "corpus", CODE)


def test_ranks_file_round_trips_through_prepare(corpus, tmp_path):
    out = tmp_path / "code.tiktoken"
    train_tokenizer([str(corpus)], vocab_size=300, out=str(out), val_fraction=0)
    tok = load_tokenizer(str(out))
    assert tok.vocab_size == 300 and tok.eot_id == 299 and tok.dtype == np.uint16
    # Learned merges: common code compresses to fewer tokens than bytes.
    assert len(tok.encode_ordinary(CODE[1])) < len(CODE[1].encode()) / 2
    for text in [*CODE[:4], HELD_OUT]:  # unseen scripts and special lookalikes decode exactly
        ids = tok.encode_ordinary(text)
        assert tok.decode(ids) == text and tok.eot_id not in ids.tolist()

    meta = prepare([str(corpus)], str(out), str(tmp_path / "d"), 0.25, 8, progress=False)
    assert meta["vocab_size"] == 300
    stream = np.concatenate([read_split(tmp_path / "d", s) for s in ("train", "val")])
    docs = tok.decode(stream).split(EOT)
    assert sorted(docs[:-1]) == sorted(CODE)  # every document back, byte for byte


def test_single_bytes_first_then_merges_then_specials(corpus, tmp_path):
    out = tmp_path / "t.tiktoken"
    specials = [EOT, "<|pad|>"]
    train_tokenizer([str(corpus)], 280, str(out), special_tokens=specials)
    lines = out.read_bytes().splitlines()
    ranks = {base64.b64decode(t): int(r) for t, r in (line.split() for line in lines)}
    assert sorted(ranks.values()) == list(range(278))
    assert all(ranks[bytes([b])] == b for b in range(256))
    assert all(len(t) > 1 for t, r in ranks.items() if r >= 256)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["special_tokens"] == {EOT: 278, "<|pad|>": 279}
    tok = load_tokenizer(str(out))
    assert tok.eot_id == 278 and tok.vocab_size == 280


def test_training_is_deterministic(corpus, tmp_path):
    for name in ("a", "b"):
        train_tokenizer([str(corpus)], 320, str(tmp_path / f"{name}.tiktoken"))
    assert (tmp_path / "a.tiktoken").read_bytes() == (tmp_path / "b.tiktoken").read_bytes()


def test_val_documents_of_prepare_are_left_out(tmp_path):
    # Documents 1, 3, 5, ... are val at val_fraction 0.5: a word only they hold is never merged.
    docs = ["common words here\n" * 20, "zyzzyva " * 50] * 4
    corpus = write_text_corpus(tmp_path / "c", docs)
    train_tokenizer([str(corpus)], 300, str(tmp_path / "held.tiktoken"), val_fraction=0.5)
    train_tokenizer([str(corpus)], 300, str(tmp_path / "all.tiktoken"), val_fraction=0)
    held, every = (load_tokenizer(str(tmp_path / f"{n}.tiktoken")) for n in ("held", "all"))
    assert len(every.encode_ordinary(" zyzzyva")) == 1
    assert len(held.encode_ordinary(" zyzzyva")) > 1
    assert len(held.encode_ordinary("common")) == 1


def test_small_corpus_gives_fewer_ids_and_says_so(tmp_path, caplog):
    corpus = write_text_corpus(tmp_path / "c", ["abab abab"])
    out = tmp_path / "t.tiktoken"
    train_tokenizer([str(corpus)], 4096, str(out), val_fraction=0)
    tok = load_tokenizer(str(out))
    assert tok.vocab_size < 4096 and tok.eot_id == tok.vocab_size - 1
    assert "the corpus supports only" in caplog.text


def test_max_bytes_caps_the_training_text(corpus, tmp_path, caplog):
    caplog.set_level("INFO")
    train_tokenizer([str(corpus)], 300, str(tmp_path / "t.tiktoken"), max_bytes=100)
    # 32 + 59 bytes (document 1 is val): a third document would pass 100
    assert "from 0.0 MB of 2 documents" in caplog.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vocab_size=200"], "--vocab_size 200 is too small: 256 bytes and 1 special"),
        (["--out={tmp}/t.txt"], "must end in .tiktoken"),
        (["--out={tmp}/missing/t.tiktoken"], "does not exist"),
        (["--special_tokens=[<|pad|>]"], "--special_tokens must include <|endoftext|>"),
        (["--val_fraction=0.9"], "--val_fraction must be in [0, 0.5]"),
        (["--max_bytes=0"], "--max_bytes must be at least 1"),
        (["--sources=[{tmp}/nothing_here]"], "nothing_here"),
        (["--vocab_sise=300"], "vocab_sise"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(corpus, tmp_path, capsys, args, message):
    base = {"--sources": f"[{corpus}]", "--vocab_size": "300", "--out": f"{tmp_path}/t.tiktoken"}
    for arg in args:
        key, value = arg.split("=", 1)
        base[key] = value.format(tmp=tmp_path)
    code = main(["train_tokenizer", *(f"{k}={v}" for k, v in base.items())])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: ") and "\n" not in err
    assert message in err
    assert not list(tmp_path.glob("t.*"))


def test_existing_output_is_kept_unless_overwrite(corpus, tmp_path):
    out = tmp_path / "t.tiktoken"
    out.write_text("precious")
    with pytest.raises(UserError, match=r"t\.tiktoken exists: pass --overwrite true"):
        train_tokenizer([str(corpus)], 300, str(out))
    assert out.read_text() == "precious"
    train_tokenizer([str(corpus)], 300, str(out), overwrite=True)
    assert load_tokenizer(str(out)).vocab_size == 300


def test_empty_corpus_is_refused(tmp_path):
    corpus = write_text_corpus(tmp_path / "c", ["", ""])
    with pytest.raises(UserError, match="the corpus is empty"):
        train_tokenizer([str(corpus)], 300, str(tmp_path / "t.tiktoken"))
    assert not list(tmp_path.glob("t.*"))


def test_bundled_stdlib_vocabulary_loads_by_name():
    tok = load_tokenizer("stdlib-4k")
    assert tok.vocab_size == 4096 and tok.eot_id == 4095
    text = "    def __init__(self, name):\n        self.name = name\n"
    ids = tok.encode_ordinary(text)
    assert tok.decode(ids) == text and len(ids) <= 16
