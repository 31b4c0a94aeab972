"""The exported tokenizer files: AutoTokenizer encodes and decodes exactly as the project's
tiktoken encoding does (ordinary text: special-token lookalikes stay text), for every kind of
tokenizer: gpt2, bytes, the bundled stdlib-4k and a freshly trained .tiktoken vocabulary."""

from __future__ import annotations

import json

import pytest
from conftest import write_text_corpus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.interop.hf_tokenizer import (
    bpe_merges,
    oniguruma_pattern,
    write_tokenizer_files,
)
from lit_gpt_scratch.tokenizer.encodings import EOT, load_tokenizer
from lit_gpt_scratch.tokenizer.training import train_tokenizer

transformers = pytest.importorskip("transformers")

LOOKALIKES = [EOT, "<|", "|>", "<|user|>", "<|end|>", "<|endoftext", "\r\n", "\t", "  "]
WHITESPACE = " \t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u2028\u2029\u202f\u3000"
CJK = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
# Arbitrary Unicode (no lone surrogates: UTF-8 cannot hold them), mixed with special-token
# lookalikes, runs of every kind of whitespace, CJK, digits and the regexes' contractions.
text = st.lists(
    st.one_of(
        st.text(max_size=30),
        st.text(alphabet=WHITESPACE, min_size=1, max_size=8),
        st.text(alphabet=CJK, min_size=1, max_size=8),
        st.text(alphabet="0123456789", min_size=1, max_size=9),
        st.sampled_from(LOOKALIKES + ["'s", "'LL", "'ve", " def", "    return", "日本語"]),
        st.just("👩‍👩‍👧"),
    ),
    max_size=12,
).map("".join)

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n",
    "日本語のテキスト、日本語の文。 ничего ничего 12345678\n",
    "    \t\t  \n\n\n  x = '''it's'''  # done\n",
] * 8


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Each tokenizer kind with the AutoTokenizer of its exported files."""
    root = tmp_path_factory.mktemp("tokenizers")
    corpus = write_text_corpus(root / "corpus", CORPUS)
    trained = root / "trained.tiktoken"
    train_tokenizer([str(corpus)], 400, str(trained), val_fraction=0)
    out = {}
    for spec in ("gpt2", "bytes", "stdlib-4k", str(trained)):
        tok = load_tokenizer(spec)
        directory = root / f"hf-{len(out)}"
        directory.mkdir()
        write_tokenizer_files(tok, directory, model_max_length=256)
        out[spec if spec != str(trained) else "trained"] = (
            tok,
            transformers.AutoTokenizer.from_pretrained(directory),
        )
    return out


KINDS = ["gpt2", "bytes", "stdlib-4k", "trained"]


@pytest.mark.parametrize("kind", KINDS)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sample=text)
def test_autotokenizer_encodes_and_decodes_as_the_project(pairs, kind, sample):
    tok, hf = pairs[kind]
    ids = tok.encode_ordinary(sample).tolist()
    assert hf(sample)["input_ids"] == ids
    assert hf.encode(sample) == ids  # no BOS/EOS added
    assert hf.decode(ids) == tok.decode(ids) == sample


@pytest.mark.parametrize("kind", KINDS)
def test_special_ids_and_vocabulary_size(pairs, kind):
    tok, hf = pairs[kind]
    assert len(hf) == tok.vocab_size
    assert hf.eos_token == hf.bos_token == hf.pad_token == EOT
    assert hf.eos_token_id == tok.eot_id
    assert hf.convert_tokens_to_ids(EOT) == tok.eot_id
    assert hf.decode([tok.eot_id]) == EOT
    assert hf.decode([5, tok.eot_id], skip_special_tokens=True) == tok.decode([5])


def test_every_id_decodes_to_its_bytes(pairs):
    tok, hf = pairs["stdlib-4k"]
    for i in range(tok.vocab_size):
        if i != tok.eot_id:
            raw = tok.encoding.decode_single_token_bytes(i)
            assert hf.convert_ids_to_tokens(i) is not None
            assert hf.decode([i]) == raw.decode("utf-8", errors="replace")


def test_bytes_tokenizer_is_256_bytes_and_eot(pairs):
    tok, hf = pairs["bytes"]
    assert len(hf) == 257 and hf.eos_token_id == 256
    assert hf("é")["input_ids"] == [0xC3, 0xA9]


def test_gpt2_vocabulary_is_the_official_one(pairs):
    from lit_gpt_scratch.tokenizer.encodings import gpt2_files

    _, hf = pairs["gpt2"]
    official = json.loads(gpt2_files()["encoder.json"].read_text())
    assert hf.get_vocab() == official


def test_merges_are_the_pairs_bpe_joins():
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"ab": 256, b"abc": 257, b"bc": 258, b"abcbc": 259})
    assert bpe_merges(ranks) == [(b"a", b"b"), (b"ab", b"c"), (b"b", b"c"), (b"abc", b"bc")]


def test_a_rank_no_merge_reaches_is_refused():
    ranks = {bytes([b]): b for b in range(256)} | {b"abc": 256}
    with pytest.raises(UserError, match=r"rank 256 \(b'abc'\) is not the merge of two"):
        bpe_merges(ranks)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"\p{N}{1,3}+|\s", r"(?>\p{N}{1,3})|\s"),
        (r"[a-z]{2}+", r"(?>[a-z]{2})"),
        (r"(?:ab){1,2}+x", r"(?>(?:ab){1,2})x"),
        (r"[{]{1,3}\p{L}++", r"[{]{1,3}\p{L}++"),  # only a possessive interval changes
    ],
)
def test_possessive_intervals_become_atomic_groups(pattern, expected):
    assert oniguruma_pattern(pattern) == expected


CHAT_ROLES = st.sampled_from(["system", "user", "assistant"])
no_lookalikes = text.filter(lambda s: "<|" not in s)


@settings(max_examples=60, deadline=None)
@given(
    conversation=st.lists(st.tuples(CHAT_ROLES, no_lookalikes), min_size=1, max_size=4),
    prompt=st.booleans(),
)
def test_chat_template_renders_the_projects_ids(chat_pair, conversation, prompt):
    from lit_gpt_scratch.data.chat_template import ChatTemplate

    tok, hf = chat_pair
    messages = [{"role": role, "content": content} for role, content in conversation]
    template = ChatTemplate(tok)
    want = template.prompt(messages) if prompt else template.render(messages)[0].tolist()
    got = hf.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=prompt, return_dict=False
    )
    assert list(got) == want


@pytest.fixture(scope="module")
def chat_pair(tmp_path_factory):
    from lit_gpt_scratch.interop.hf_export import CHAT_TEMPLATE

    tok = load_tokenizer("stdlib-4k+chat")
    directory = tmp_path_factory.mktemp("chat")
    write_tokenizer_files(tok, directory, model_max_length=256, chat_template=CHAT_TEMPLATE)
    return tok, transformers.AutoTokenizer.from_pretrained(directory)
