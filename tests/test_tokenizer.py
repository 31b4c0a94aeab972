"""The tokenizer layer: offline gpt2, other specs, ordinary-text encoding, dtypes."""

from __future__ import annotations

import base64
import json
import shutil
import socket

import numpy as np
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.tokenizer import encodings as tok_module
from lit_gpt_scratch.tokenizer.encodings import GPT2_SHA256, build_gpt2, gpt2_files, load_tokenizer

LOOKALIKES = ["<|endoftext|>", "<|", "|>", "<|fim_prefix|>", "<|endofprompt|>", "\r\n", "\t", "  "]
# Arbitrary Unicode (hypothesis leaves out lone surrogates, which UTF-8 cannot hold) mixed with
# special-token lookalikes, CJK, Arabic, emoji with ZWJ, combining marks and whitespace runs.
unicode_text = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.sampled_from(
            LOOKALIKES + ["日本語", "العربية", "👩‍👩‍👧", "e\u0301", "\u200d", "    \t"]
        ),
    ),
    max_size=12,
).map("".join)


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer("gpt2")


def test_gpt2_matches_tiktoken_reference_construction(gpt2):
    # tiktoken's own builder, fed the same local files, is the reference we did not write.
    files = gpt2_files()
    ranks = data_gym_to_mergeable_bpe_ranks(
        str(files["vocab.bpe"]),
        str(files["encoder.json"]),
        vocab_bpe_hash=GPT2_SHA256["vocab.bpe"],
        encoder_json_hash=GPT2_SHA256["encoder.json"],
    )
    assert gpt2.encoding._mergeable_ranks == ranks
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256
    assert gpt2.dtype == np.uint16
    assert gpt2.encoding.encode_ordinary("hello world") == [31373, 995]  # tiktoken's doc example


def test_gpt2_loads_without_any_network_attempt(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    tok_module._gpt2.cache_clear()
    assert load_tokenizer("gpt2").encode_ordinary("offline").tolist() == [2364, 1370]


@pytest.mark.parametrize("name", ["vocab.bpe", "encoder.json"])
def test_gpt2_file_with_bad_hash_is_refused(tmp_path, name):
    files = {n: shutil.copy(p, tmp_path / n) for n, p in gpt2_files().items()}
    with open(files[name], "ab") as f:
        f.write(b" ")
    with pytest.raises(UserError, match=rf"{name}: sha256 \w+ is not the official"):
        build_gpt2(tmp_path / "vocab.bpe", tmp_path / "encoder.json")


@given(unicode_text)
@settings(max_examples=300, deadline=None)
def test_ordinary_encoding_round_trips_and_never_emits_special_ids(gpt2, text):
    ids = gpt2.encode_ordinary(text)
    assert ids.dtype == np.uint32
    assert ids.tolist() == gpt2.encoding.encode_ordinary(text)
    assert gpt2.eot_id not in ids.tolist()
    assert gpt2.decode(ids) == text


def test_literal_eot_in_text_is_plain_text(gpt2):
    ids = gpt2.encode_ordinary("a<|endoftext|>b").tolist()
    assert 50256 not in ids and gpt2.decode(ids) == "a<|endoftext|>b"


def test_unknown_tokenizer_names_the_spec():
    with pytest.raises(UserError, match=r"unknown tokenizer 'gpt9'.*gpt2.*cl100k_base"):
        load_tokenizer("gpt9")


def test_missing_tokenizer_file_is_named(tmp_path):
    with pytest.raises(UserError, match=r"tokenizer file .*nope\.tiktoken does not exist"):
        load_tokenizer(str(tmp_path / "nope.tiktoken"))


def test_named_tiktoken_encoding_offline_is_a_clear_error(monkeypatch, tmp_path):
    def offline(url):
        raise ConnectionError(f"no route to {url}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    tok_module._tiktoken_named.cache_clear()
    with pytest.raises(UserError, match=r"tokenizer 'cl100k_base': tiktoken could not load it"):
        load_tokenizer("cl100k_base")


def write_big_vocab(path):
    """A ranks file with more than 65,536 ids where ordinary text uses ids above 65,535.

    Single bytes take ranks 0..255, then 65,536 filler tokens no UTF-8 text can produce, then
    every pair of ASCII letters, so words merge into ids >= 65,792.
    """
    ranks = [bytes([b]) for b in range(256)]
    ranks += [b"\xff\xfe" + i.to_bytes(3, "big") for i in range(65536)]
    letters = b"abcdefghijklmnopqrstuvwxyz"
    ranks += [bytes([a, b]) for a in letters for b in letters]
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % r for r, t in enumerate(ranks)))
    return len(ranks)


def test_ranks_file_with_more_than_65536_ids_uses_uint32(tmp_path):
    n = write_big_vocab(tmp_path / "big.tiktoken")
    tok = load_tokenizer(str(tmp_path / "big.tiktoken"))
    assert tok.vocab_size == n + 1 and tok.eot_id == n  # EOT reserved after the ranks
    assert tok.dtype == np.uint32
    ids = tok.encode_ordinary("hello world").tolist()
    assert max(ids) >= 65536 and tok.decode(ids) == "hello world"
    assert tok.identity.startswith("sha256:")


def test_ranks_file_sidecar_sets_pattern_and_special_tokens(tmp_path):
    (tmp_path / "t.tiktoken").write_bytes(
        b"".join(base64.b64encode(bytes([b])) + b" %d\n" % b for b in range(256))
    )
    (tmp_path / "t.json").write_text(
        json.dumps({"pat_str": r"\S+|\s+", "special_tokens": {"<|endoftext|>": 300}})
    )
    tok = load_tokenizer(str(tmp_path / "t.tiktoken"))
    assert tok.eot_id == 300 and tok.vocab_size == 301 and tok.dtype == np.uint16
    assert tok.encode_ordinary("ab c").tolist() == [97, 98, 32, 99]


def test_malformed_ranks_file_names_the_line(tmp_path):
    (tmp_path / "bad.tiktoken").write_text("YQ== 0\nnot-a-rank-line\n")
    with pytest.raises(UserError, match=r"bad\.tiktoken: line 2 is not 'base64 rank'"):
        load_tokenizer(str(tmp_path / "bad.tiktoken"))


def test_token_dtype_boundaries():
    assert tok_module.token_dtype(65535) == np.uint16
    assert tok_module.token_dtype(65536) == np.uint32
    with pytest.raises(UserError, match="does not fit in uint32"):
        tok_module.token_dtype(2**32)


def test_bad_sidecar_json_is_named(tmp_path):
    (tmp_path / "t.tiktoken").write_text("YQ== 0\n")
    (tmp_path / "t.json").write_text("{pat_str: oops")
    with pytest.raises(UserError, match=r"tokenizer sidecar .*t\.json: not valid JSON"):
        load_tokenizer(str(tmp_path / "t.tiktoken"))


def test_bytes_tokenizer_is_utf8_bytes_plus_eot():
    tok = load_tokenizer("bytes")
    assert (tok.vocab_size, tok.eot_id, tok.dtype) == (257, 256, np.uint16)
    text = "héllo <|endoftext|> 日本"
    ids = tok.encode_ordinary(text)
    assert ids.tolist() == list(text.encode("utf-8")) and tok.decode(ids) == text
