"""GGUF files run by llama.cpp itself (through llama-cpp-python, which builds llama.cpp from
source: ``pip install llama-cpp-python``; skipped without it): the logits of both architectures
equal ours, and llama.cpp tokenizes text as the project's tokenizer does.

ggml's CPU GELU reads a table indexed by the f16 value of its input: with our GELU computed the
same way the gpt2 logits agree to float rounding, and with the exact GELU to about 1e-3 of the
logits' scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_gguf import V, gpt2_layout, llama_layout

from lit_gpt_scratch.interop.gguf_export import write_gguf
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

F32 = 0  # GGML_TYPE_F32: keys and values cached in f32, so the comparison is of the model
TEXTS = [
    "Hello world!  It's 2024: naïve café, 東京 and   spaces\n\n\tdone.",
    "    def f(x):\n        return x ** 2  # square\r\n",
    "<|endoftext|> is text here, and so is <|user|>",
    "I'LL say 12345678 ' ''' \u00a0\u2003 emoji 🤖🧪 and ümlaut ÆØÅ",
]


EXACT_GELU = F.gelu


def ggml_gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU as ggml's CPU kernel computes it: f16 in, f16 out (its lookup table)."""
    return EXACT_GELU(x.half().float(), approximate=approximate).half().to(x.dtype)


def load(path, n_ctx: int = 64):
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2,
        type_k=F32, type_v=F32, seed=0,
    )  # fmt: skip


@pytest.mark.parametrize(
    "make", [gpt2_layout, lambda: gpt2_layout(tied=False, bias=False), llama_layout,
             lambda: llama_layout(tied=True, bias=False)],
    ids=["gpt2", "gpt2-untied-no-bias", "llama-gqa-bias", "llama-tied"],
)  # fmt: skip
def test_llama_cpp_computes_our_logits(tmp_path, monkeypatch, make):
    model = make()
    path = tmp_path / "m.gguf"
    arch = write_gguf(path, model, load_tokenizer("bytes"), "f32", "m")
    llm = load(path)
    torch.manual_seed(1)
    idx = torch.randint(0, V, (model.block_size,))
    llm.eval(idx.tolist())
    theirs = torch.from_numpy(np.array(llm.scores[: len(idx)], dtype=np.float32))
    llm.close()
    with torch.no_grad():
        exact = model(idx[None])[0][0, :, :V]
        monkeypatch.setattr(F, "gelu", ggml_gelu)  # only the gpt2 layout has a GELU
        ours = model(idx[None])[0][0, :, :V]
    scale = max(ours.abs().max().item(), 1.0)
    assert torch.allclose(theirs, ours, atol=1e-5 * scale, rtol=0)
    assert torch.allclose(theirs, exact, atol=(1e-3 if arch == "gpt2" else 1e-5) * scale, rtol=0)


@pytest.mark.parametrize("spec", ["gpt2", "bytes", "stdlib-4k", "stdlib-4k+chat"])
def test_llama_cpp_tokenizes_as_the_project(tmp_path, spec):
    tok = load_tokenizer(spec)
    model = GPT(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=1, d_model=4)
    path = tmp_path / "m.gguf"
    write_gguf(path, model, tok, "f32", "m")
    llm = load(path)
    for text in TEXTS:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert ids == tok.encode_ordinary(text).tolist(), text
        assert llm.detokenize(ids).decode("utf-8") == text
    llm.close()
