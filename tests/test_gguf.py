"""GGUF export: gguf's own reader gets back every tensor (bitwise in f32), the hyper-parameters
llama.cpp reads, and the vocabulary, merges and special tokens; a forward pass written with
llama.cpp's conventions (adjacent-pair RoPE, fused or split q/k/v, tied head) on the file's
tensors computes our logits; what llama.cpp cannot express is refused in one line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.interop.gguf_export import write_gguf
from lit_gpt_scratch.interop.gguf_layout import gguf_layout
from lit_gpt_scratch.interop.gguf_vocab import CONTROL, NEVER_MERGE, NORMAL, UNUSED
from lit_gpt_scratch.interop.hf_tokenizer import bpe_merges
from lit_gpt_scratch.model.attention import CausalSelfAttention
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.model.mlp import GeluMLP, ReluSquaredMLP, SwiGLU
from lit_gpt_scratch.model.norm import LayerNorm, RMSNorm
from lit_gpt_scratch.model.position import NoPosition, RotaryPosition
from lit_gpt_scratch.tokenizer.encodings import gpt2_byte_alphabet, load_tokenizer

gguf = pytest.importorskip("gguf")

V, T = 257, 16  # the bytes tokenizer's ids


def randomized(model: GPT, seed: int = 0) -> GPT:
    """Every parameter random (norm weights and biases included), so no tensor is trivial."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def gpt2_layout(tied: bool = True, bias: bool = True) -> GPT:
    return randomized(
        GPT(vocab_size=V, block_size=T, n_layer=2, n_head=4, d_model=32, tie_embeddings=tied,
            attention=lambda *s: CausalSelfAttention(*s, bias=bias),
            mlp=lambda d: GeluMLP(d, hidden=48, bias=bias),
            norm=lambda d: LayerNorm(d, bias=bias, eps=1e-5))
    )  # fmt: skip


def llama_layout(tied: bool = False, bias: bool = True) -> GPT:
    return randomized(
        GPT(vocab_size=V, block_size=T, n_layer=2, n_head=4, d_model=32, tie_embeddings=tied,
            attention=lambda *s: CausalSelfAttention(*s, n_kv_head=2, bias=bias),
            mlp=lambda d: SwiGLU(d, hidden=48, bias=bias),
            norm=lambda d: RMSNorm(d, eps=1e-6),
            position=lambda *s: RotaryPosition(*s, base=500.0))
    )  # fmt: skip


def export(model: GPT, path: Path, tokenizer: str = "bytes", dtype: str = "f32"):
    """The file written for ``model``, read back by gguf's reader."""
    arch = write_gguf(path, model, load_tokenizer(tokenizer), dtype, name="test")
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == arch
    return reader


def tensors(reader) -> dict[str, torch.Tensor]:
    return {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}


def field(reader, key: str):
    return reader.fields[key].contents()


# --- tensors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda: gpt2_layout(tied=True), {"position_embd.weight", "blk.1.attn_qkv.bias"}),
        (lambda: gpt2_layout(tied=False, bias=False), {"output.weight", "blk.0.ffn_up.bias"}),
        (lambda: llama_layout(tied=False), {"output.weight", "blk.1.attn_k.bias"}),
        (lambda: llama_layout(tied=True, bias=False), {"blk.0.ffn_gate.weight"}),
    ],
    ids=["gpt2-tied", "gpt2-untied-no-bias", "llama-gqa-bias", "llama-tied"],
)
def test_every_tensor_reads_back_bitwise_in_f32(tmp_path, make, names):
    model = make()
    expected = gguf_layout(model).tensors
    read = tensors(export(model, tmp_path / "m.gguf"))
    assert read.keys() == expected.keys() and names <= read.keys()
    assert ("output.weight" in read) == (model.lm_head.weight is not model.wte.weight)
    for name, tensor in expected.items():
        assert read[name].dtype == torch.float32
        assert torch.equal(read[name], tensor), name  # bit for bit
    assert read["token_embd.weight"].shape == (V, 32)  # the vocab_multiple rows dropped


def test_f16_keeps_vectors_in_f32_and_refuses_what_f16_cannot_hold(tmp_path):
    model = llama_layout()
    read = tensors(export(model, tmp_path / "m.gguf", dtype="f16"))
    for name, tensor in gguf_layout(model).tensors.items():
        if tensor.dim() == 1:
            assert read[name].dtype == torch.float32 and torch.equal(read[name], tensor)
        else:
            assert read[name].dtype == torch.float16 and torch.equal(read[name], tensor.half())
    with torch.no_grad():
        model.blocks[1].mlp.up.weight[3, 4] = 1e5
    with pytest.raises(UserError, match=r"--dtype f16: tensor blk.1.ffn_up.weight has values"):
        write_gguf(tmp_path / "big.gguf", model, load_tokenizer("bytes"), "f16", "big")
    assert not list(tmp_path.glob("*big*"))


# --- the function llama.cpp computes from those tensors -----------------------------------


def llama_cpp_logits(read: dict, reader, idx: torch.Tensor) -> torch.Tensor:
    """The forward pass of llama.cpp's gpt2 or llama graph on the file's tensors, written
    from its conventions, not from our model: (T,) ids -> (T, V) logits."""
    arch = field(reader, "general.architecture")
    hp = {k.removeprefix(f"{arch}."): f.contents() for k, f in reader.fields.items()}
    n_head, n_kv = hp["attention.head_count"], hp["attention.head_count_kv"]
    C, n = hp["embedding_length"], len(idx)
    hs = C // n_head
    x = read["token_embd.weight"][idx]  # (T, C)
    pos = torch.arange(n)

    def norm(x, prefix):
        if arch == "gpt2":
            eps = hp["attention.layer_norm_epsilon"]
            return F.layer_norm(x, (C,), read[prefix + ".weight"], read[prefix + ".bias"], eps)
        eps = hp["attention.layer_norm_rms_epsilon"]
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * read[prefix + ".weight"]

    def linear(x, prefix):
        return F.linear(x, read[prefix + ".weight"], read.get(prefix + ".bias"))

    def rope_adjacent_pairs(x):  # (h, T, hs): rotate (2i, 2i + 1) by pos * base^(-2i/hs)
        inv = hp["rope.freq_base"] ** -(torch.arange(0, hs, 2, dtype=torch.float32) / hs)
        angle = pos[:, None] * inv[None, :]  # (T, hs/2)
        even, odd = x[..., 0::2], x[..., 1::2]
        cos, sin = angle.cos(), angle.sin()
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2)

    if arch == "gpt2":
        x = x + read["position_embd.weight"][pos]
    for i in range(hp["block_count"]):
        b = f"blk.{i}."
        h = norm(x, b + "attn_norm")
        if arch == "gpt2":
            q, k, v = linear(h, b + "attn_qkv").split([C, n_kv * hs, n_kv * hs], -1)
        else:
            q, k, v = (linear(h, b + f"attn_{p}") for p in "qkv")
        q, k, v = (t.view(n, -1, hs).transpose(0, 1) for t in (q, k, v))  # (h, T, hs)
        if arch == "llama":
            q, k = rope_adjacent_pairs(q), rope_adjacent_pairs(k)
        k, v = (t.repeat_interleave(n_head // n_kv, 0) for t in (k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(hs)
        scores = scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, C)
        x = x + linear(y, b + "attn_output")
        h = norm(x, b + "ffn_norm")
        if arch == "gpt2":
            h = F.gelu(linear(h, b + "ffn_up"), approximate="tanh")
        else:
            h = F.silu(linear(h, b + "ffn_gate")) * linear(h, b + "ffn_up")
        x = x + linear(h, b + "ffn_down")
    x = norm(x, "output_norm")
    return F.linear(x, read.get("output.weight", read["token_embd.weight"]))


@pytest.mark.parametrize("make", [gpt2_layout, llama_layout, lambda: llama_layout(tied=True)])
def test_llama_cpp_conventions_on_the_file_compute_our_logits(tmp_path, make):
    model = make()
    reader = export(model, tmp_path / "m.gguf")
    idx = torch.randint(0, V, (T,))
    with torch.no_grad():
        ours, _ = model(idx[None])
        theirs = llama_cpp_logits(tensors(reader), reader, idx)
    assert torch.allclose(theirs, ours[0, :, :V], atol=1e-4, rtol=0)


def test_without_the_rope_reordering_the_logits_differ(tmp_path, monkeypatch):
    """The q/k reordering is what makes adjacent-pair RoPE compute ours (the test above can
    fail): written as "rotate half" rows, the same file gives other logits."""
    import lit_gpt_scratch.interop.gguf_layout as layout

    monkeypatch.setattr(layout, "interleaved_rope_rows", lambda rows, n: rows)
    model = llama_layout()
    reader = export(model, tmp_path / "m.gguf")
    idx = torch.randint(0, V, (T,))
    with torch.no_grad():
        ours, _ = model(idx[None])
        theirs = llama_cpp_logits(tensors(reader), reader, idx)
    assert not torch.allclose(theirs, ours[0, :, :V], atol=1e-2, rtol=0)


# --- hyper-parameters ------------------------------------------------------------------------


def test_gpt2_architecture_keys(tmp_path):
    reader = export(gpt2_layout(), tmp_path / "m.gguf")
    assert field(reader, "general.architecture") == "gpt2"
    assert field(reader, "general.name") == "test"
    assert field(reader, "general.file_type") == 0  # ALL_F32
    expected = {
        "gpt2.context_length": T,
        "gpt2.embedding_length": 32,
        "gpt2.block_count": 2,
        "gpt2.feed_forward_length": 48,
        "gpt2.attention.head_count": 4,
        "gpt2.attention.head_count_kv": 4,
    }
    assert {key: field(reader, key) for key in expected} == expected
    assert field(reader, "gpt2.attention.layer_norm_epsilon") == pytest.approx(1e-5)
    assert not [key for key in reader.fields if "rope" in key]


def test_llama_architecture_keys(tmp_path):
    reader = export(llama_layout(), tmp_path / "m.gguf", dtype="f16")
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.file_type") == 1  # MOSTLY_F16
    expected = {
        "llama.context_length": T,
        "llama.embedding_length": 32,
        "llama.block_count": 2,
        "llama.feed_forward_length": 48,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 8,
        "llama.vocab_size": V,
    }
    assert {key: field(reader, key) for key in expected} == expected
    assert field(reader, "llama.rope.freq_base") == 500.0
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)


# --- the vocabulary --------------------------------------------------------------------------


ALPHABET = gpt2_byte_alphabet()


def token_bytes(text: str) -> bytes:
    return bytes(ALPHABET[c] for c in text)


@pytest.fixture(scope="module")
def exported_vocabularies(tmp_path_factory):
    """spec -> the file of a model 3 ids larger than that tokenizer (padding ids), written
    once: the merges of GPT-2's 50,000 tokens take seconds to find."""
    files = {}

    def get(spec: str):
        if spec not in files:
            n_vocab = load_tokenizer(spec).vocab_size + 3
            model = GPT(vocab_size=n_vocab, block_size=4, n_layer=1, n_head=1, d_model=4)
            path = tmp_path_factory.mktemp("vocab") / "m.gguf"
            files[spec] = export(model, path, tokenizer=spec)
        return files[spec]

    return get


@pytest.mark.parametrize(
    ("spec", "pre"),
    [("gpt2", "gpt-2"), ("bytes", "llama-bpe"), ("stdlib-4k", "llama-bpe"),
     ("stdlib-4k+chat", "llama-bpe")],
)  # fmt: skip
def test_vocabulary_merges_and_special_tokens_read_back(exported_vocabularies, spec, pre):
    tok = load_tokenizer(spec)
    n_vocab = tok.vocab_size + 3
    reader = exported_vocabularies(spec)
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == pre
    assert len(tokens) == len(types) == n_vocab
    specials = tok.encoding._special_tokens
    special_ids = set(specials.values())
    for i in range(n_vocab):
        if i in special_ids:
            assert types[i] == CONTROL and specials[tokens[i]] == i
        elif i >= tok.vocab_size:
            assert (types[i], tokens[i]) == (UNUSED, f"[PAD{i}]")
        else:
            assert types[i] == NORMAL
            assert token_bytes(tokens[i]) == tok.encoding.decode_single_token_bytes(i)
    merges = field(reader, "tokenizer.ggml.merges")
    expected = [(a, b) for a, b in bpe_merges(tok.encoding._mergeable_ranks)]
    if not expected:
        assert merges == [NEVER_MERGE]  # llama.cpp needs one; it never applies
    else:
        assert [tuple(map(token_bytes, m.split(" "))) for m in merges] == expected
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        assert field(reader, f"tokenizer.ggml.{key}") == tok.eot_id
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    chat = spec.endswith("+chat")
    assert ("tokenizer.chat_template" in reader.fields) == chat
    if chat:
        assert field(reader, "tokenizer.ggml.eot_token_id") == specials["<|end|>"]


def test_merges_applied_in_order_encode_as_tiktoken(exported_vocabularies):
    """The gpt-2 pre-tokenizer uses the merges alone (no whole-token shortcut): applying them
    by rank to each split piece gives tiktoken's ids for GPT-2's vocabulary."""
    import regex

    tok = load_tokenizer("gpt2")
    reader = exported_vocabularies("gpt2")
    ids = {text: i for i, text in enumerate(field(reader, "tokenizer.ggml.tokens"))}
    rank = {tuple(m.split(" ")): r for r, m in enumerate(field(reader, "tokenizer.ggml.merges"))}
    chars = {b: c for c, b in gpt2_byte_alphabet().items()}
    text = "Hello world!  It's 2024: naïve café, 東京 and   spaces\n\n\tdone."
    out = []
    for piece in regex.findall(tok.encoding._pat_str, text):
        parts = [chars[b] for b in piece.encode("utf-8")]
        while len(parts) > 1:
            pairs = [
                (rank.get(pair, math.inf), i)
                for i, pair in enumerate(zip(parts, parts[1:], strict=False))
            ]
            best, i = min(pairs)
            if best == math.inf:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        out += [ids[p] for p in parts]
    assert out == tok.encode_ordinary(text).tolist()


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mlp": ReluSquaredMLP}, r"mlp ReluSquaredMLP has no llama.cpp equivalent"),
        ({"logit_softcap": 15.0}, r"gpt GPT with logit_softcap has no llama.cpp equivalent"),
        (
            {"attention": lambda *s: CausalSelfAttention(*s, qk_norm=True)},
            r"attention CausalSelfAttention with QK-norm has no llama.cpp equivalent",
        ),
        (
            {"attention": lambda *s: CausalSelfAttention(*s, window=4)},
            r"attention CausalSelfAttention with a sliding window",
        ),
        ({"position": NoPosition}, r"position NoPosition has no llama.cpp equivalent"),
        ({"position": RotaryPosition}, r"mlp GeluMLP has no llama.cpp equivalent"),
        ({"norm": RMSNorm}, r"norm RMSNorm has no llama.cpp equivalent"),
    ],
)
def test_unexpressible_models_are_refused_naming_the_plug_in(tmp_path, kwargs, message):
    model = GPT(vocab_size=V, block_size=T, n_layer=1, n_head=4, d_model=32, **kwargs)
    with pytest.raises(UserError, match=r"^cannot export to GGUF: " + message):
        write_gguf(tmp_path / "m.gguf", model, load_tokenizer("bytes"), "f32", "m")
    assert not list(tmp_path.iterdir())  # nothing written, no temporary left


def test_a_document_mask_model_exports_as_its_architecture(tmp_path):
    model = GPT(vocab_size=V, block_size=T, n_layer=1, n_head=4, d_model=32,
                document_mask=True, eot_id=V - 1)  # fmt: skip
    reader = export(randomized(model), tmp_path / "m.gguf")
    idx = torch.randint(0, V - 1, (T,))
    idx[0] = V - 1  # one document: the mask changes nothing
    with torch.no_grad():
        ours, _ = model(idx[None])
        theirs = llama_cpp_logits(tensors(reader), reader, idx)
    assert torch.allclose(theirs, ours[0, :, :V], atol=1e-4, rtol=0)


# --- the command -----------------------------------------------------------------------------


def test_export_gguf_command_writes_the_file_once(tmp_path, cli):
    from conftest import save_weights_only

    ckpt = save_weights_only(tmp_path / "m.ckpt")
    out = tmp_path / "m.gguf"
    result = cli("export_gguf", f"--ckpt_path={ckpt}", f"--out={out}", "--dtype=f16")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out}: gpt2 architecture, f16, ")
    assert result.stdout.rstrip().endswith("with the stdlib-4k tokenizer (4,096 ids)")
    reader = gguf.GGUFReader(out)
    assert field(reader, "general.name") == "m" and field(reader, "general.file_type") == 1
    assert len(field(reader, "tokenizer.ggml.tokens")) == 4096
    again = cli("export_gguf", f"--ckpt_path={ckpt}", f"--out={out}")
    assert again.returncode == 1
    assert again.stderr.strip() == (
        f"error: --out {out} exists: choose another path or delete it first"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "m.gguf"]


def test_export_gguf_bad_dtype_is_one_line_and_writes_nothing(tmp_path, cli):
    from conftest import save_weights_only

    ckpt = save_weights_only(tmp_path / "m.ckpt")
    result = cli("export_gguf", f"--ckpt_path={ckpt}", f"--out={tmp_path / 'm.gguf'}",
                 "--dtype=q4")  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --dtype must be one of f32, f16, got 'q4'"
    assert not (tmp_path / "m.gguf").exists()


def test_a_split_regex_llama_cpp_has_no_name_for_is_left_out_with_a_note(tmp_path, cli):
    import base64
    import json

    from lit_gpt_scratch.model.build import build_gpt
    from lit_gpt_scratch.train.checkpoint_files import save_gpt

    ranks = tmp_path / "words.tiktoken"
    ranks.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    ranks.with_suffix(".json").write_text(json.dumps({"pat_str": r"\S+|\s+"}))
    spec = {"class_path": "lit_gpt_scratch.model.gpt.GPT", "init_args": {
        "vocab_size": 257, "block_size": 8, "n_layer": 1, "n_head": 2, "d_model": 8}}  # fmt: skip
    save_gpt(tmp_path / "m.ckpt", build_gpt(spec), spec, str(ranks))
    out = tmp_path / "m.gguf"
    result = cli("export_gguf", f"--ckpt_path={tmp_path / 'm.ckpt'}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert "note: no llama.cpp pre-tokenizer splits text with this tokenizer's regex" in (
        result.stdout
    )
    reader = gguf.GGUFReader(out)
    assert "tokenizer.ggml.pre" not in reader.fields
    assert field(reader, "tokenizer.ggml.tokens")[256] == "<|endoftext|>"
