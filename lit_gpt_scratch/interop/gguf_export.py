"""One GGUF file from a GPT and its tokenizer (the ``gguf`` package): what ``llama-cli -m`` and
Ollama's ``FROM`` read.

Matrices are written in f32 (exact) or f16; vectors (norms, biases) stay f32 in both, as
llama.cpp's own files keep them. The file appears whole or not at all: it is written beside
its name and renamed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.files import remove_quietly, sync_folder, temporary_path
from lit_gpt_scratch.interop.gguf_layout import gguf_layout
from lit_gpt_scratch.interop.gguf_vocab import gguf_vocabulary
from lit_gpt_scratch.interop.hf_export import CHAT_TEMPLATE
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.tokenizer.encodings import Tokenizer

FILE_TYPES = {"f32": 0, "f16": 1}  # general.file_type: llama.cpp's ALL_F32, MOSTLY_F16
F16_MAX = float(np.finfo(np.float16).max)


def _gguf():
    try:
        import gguf
    except ImportError:
        raise UserError(
            "GGUF export needs the gguf package: pip install 'lit-gpt-scratch[gguf]'"
        ) from None
    return gguf


def gguf_arrays(model: GPT, dtype: str) -> tuple[object, dict[str, np.ndarray]]:
    """The layout of ``model`` and its tensors as the numpy arrays the file holds: 2-D in
    ``dtype``, 1-D in f32. Refuses an f16 export of a weight beyond f16's range."""
    layout = gguf_layout(model)
    arrays = {}
    for name, tensor in layout.tensors.items():
        array = tensor.detach().to(torch.float32).contiguous().numpy()
        if dtype == "f16" and array.ndim > 1:
            if np.abs(array).max() > F16_MAX:
                raise UserError(
                    f"--dtype f16: tensor {name} has values beyond f16's range "
                    f"(±{F16_MAX:g}); use --dtype f32"
                )
            array = array.astype(np.float16)
        arrays[name] = array
    return layout, arrays


def write_gguf(path: str | Path, model: GPT, tok: Tokenizer, dtype: str, name: str) -> str:
    """Write ``model`` with ``tok`` as the GGUF file ``path`` (``dtype``: f32 or f16; ``name``:
    general.name) and return its architecture. Refuses, before writing anything, what
    llama.cpp cannot express."""
    gguf = _gguf()
    if dtype not in FILE_TYPES:
        raise UserError(f"--dtype must be one of {', '.join(FILE_TYPES)}, got {dtype!r}")
    layout, arrays = gguf_arrays(model, dtype)
    vocab = gguf_vocabulary(tok, model.vocab_size)
    path = Path(path)
    tmp = temporary_path(path)
    quiet = logging.getLogger("gguf")  # it logs each step at INFO
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        writer = gguf.GGUFWriter(tmp, layout.arch)
        writer.add_name(name)
        writer.add_file_type(FILE_TYPES[dtype])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in layout.hparams.items():
            full = f"{layout.arch}.{key}"
            if isinstance(value, float):
                writer.add_float32(full, value)
            else:
                writer.add_uint32(full, value)
        _add_vocabulary(writer, vocab, chat=vocab.end_of_turn_id is not None)
        for tensor_name, array in arrays.items():
            writer.add_tensor(tensor_name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)
        sync_folder(path.parent)
    except BaseException as e:
        remove_quietly(tmp)
        if isinstance(e, OSError) and e.filename != str(path):
            raise OSError(e.errno, e.strerror, str(path)) from None  # not the temporary's name
        raise
    finally:
        quiet.setLevel(level)
    return layout.arch


def _add_vocabulary(writer, vocab, chat: bool) -> None:
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.eos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_pad_token_id(vocab.eos_id)
    writer.add_add_bos_token(False)  # text is continued as is, as generate does
    writer.add_add_eos_token(False)
    if chat:
        writer.add_eot_token_id(vocab.end_of_turn_id)
        writer.add_chat_template(CHAT_TEMPLATE)
