"""The model subcommands: ``generate``, ``import_hf``, ``export``, ``export_gguf`` and
``consolidate``
(``chat`` is in ``cli/chat.py``).

Each is a plain, typed function: its signature is the CLI (``cli/main.py`` builds the parser from
it), its docstring the ``--help``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from lit_gpt_scratch.devices import usable_device
from lit_gpt_scratch.errors import UserError, check_at_least
from lit_gpt_scratch.model.generate import generate_text
from lit_gpt_scratch.train.checkpoint_files import (
    checkpoint_tokenizer,
    load_gpt,
    load_sharded_gpt,
    save_gpt,
)


def generate(
    ckpt_path: str,
    prompt: str = "",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    seed: int | None = 1337,
    num_samples: int = 1,
    device: str = "auto",
    tokenizer: str | None = None,
    use_cache: bool = True,
) -> None:
    """Print continuations of a prompt sampled from a checkpoint.

    Args:
        ckpt_path: A checkpoint written by fit or import_hf.
        prompt: Text to continue; empty starts a new document (after <|endoftext|>).
        max_new_tokens: Most tokens to add; generation also stops at <|endoftext|>.
        temperature: Softmax temperature; 0 is greedy decoding.
        top_k: Sample among the k most likely tokens only (None: all).
        top_p: Sample among the most likely tokens holding this much probability (None: all).
        seed: Random seed, for repeatable samples (None: a fresh one each run).
        num_samples: Continuations to sample, as one batch.
        device: cpu, cuda, cuda:N, or auto (cuda when available).
        tokenizer: Tokenizer spec; by default the one recorded in the checkpoint.
        use_cache: Reuse keys and values of earlier tokens (the same tokens, faster).
    """
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes the shell's locale could not decode
        raise UserError("--prompt is not valid UTF-8 text") from None
    check_at_least("--num_samples", num_samples, 1)
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    device = usable_device(device)
    loaded = load_gpt(ckpt_path, device)
    tok = checkpoint_tokenizer(loaded, tokenizer)
    try:
        texts = generate_text(
            loaded.gpt,
            tok,
            prompt,
            max_new_tokens,
            num_samples,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            use_cache=use_cache,
        )
    except ValueError as e:  # the prompt fills the context
        raise UserError(str(e)) from None
    for i, text in enumerate(texts):
        if i:
            print("\n---------------")
        sys.stdout.write(text)
    print()


def check_sampling(max_new_tokens: int, temperature: float, top_k, top_p) -> None:
    """The sampling options generate and chat share, each refused in one line."""
    check_at_least("--max_new_tokens", max_new_tokens, 1)
    check_at_least("--temperature", temperature, 0)
    if top_k is not None:
        check_at_least("--top_k", top_k, 1)
    if top_p is not None and not 0 < top_p <= 1:  # NaN included
        raise UserError(f"--top_p must be in (0, 1], got {top_p}")


def import_hf(hf_dir: str, out: str, tokenizer: str = "gpt2") -> None:
    """Convert a local Hugging Face GPT-2 or Llama directory into a checkpoint.

    Args:
        hf_dir: A directory written by save_pretrained (config.json + model.safetensors or
            pytorch_model.bin). Nothing is downloaded.
        out: The checkpoint file to write (.ckpt); it must not exist yet.
        tokenizer: Tokenizer spec recorded in the checkpoint for generate and fit.
    """
    from lit_gpt_scratch.interop.hf import gpt_from_hf, load_hf_dir
    from lit_gpt_scratch.train.checkpoint_io import check_new_file

    check_new_file(out)  # before the conversion, not after it
    gpt, spec = gpt_from_hf(load_hf_dir(hf_dir))
    save_gpt(out, gpt, spec, tokenizer)
    print(f"wrote {out}: {gpt.num_params():,} parameters, {spec['init_args']['n_layer']} layers")


def export(ckpt_path: str, out_dir: str, eval_results: str | None = None) -> None:
    """Write a checkpoint as a complete Hugging Face directory: weights (GPT2LMHeadModel,
    LlamaForCausalLM or Qwen3ForCausalLM), config.json and generation_config.json with the
    tokenizer's ids, tokenizer.json and its configs, and a model card (README.md).

    Args:
        ckpt_path: A checkpoint written by fit or import_hf.
        out_dir: Directory to create; from_pretrained(out_dir) loads the model and its
            tokenizer. It must not exist yet, or be empty.
        eval_results: A results file written by evaluate --out, whose scores go into the
            model card.
    """
    from lit_gpt_scratch.interop.hf_export import converted, write_export
    from lit_gpt_scratch.interop.model_card import read_eval_results, training_facts
    from lit_gpt_scratch.train.checkpoint_files import read_checkpoint

    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        raise UserError(f"--out_dir {out_dir} is a file: choose a new folder")
    if target.exists() and any(target.iterdir()):
        raise UserError(f"--out_dir {out_dir} exists and is not empty")
    scores = read_eval_results(eval_results) if eval_results is not None else None
    loaded = load_gpt(ckpt_path)
    tok = checkpoint_tokenizer(loaded)
    command = f"python -m lit_gpt_scratch export --ckpt_path={shlex.quote(str(ckpt_path))} "
    command += f"--out_dir={shlex.quote(str(out_dir))}"
    if eval_results is not None:
        command += f" --eval_results={shlex.quote(str(eval_results))}"
    hf = converted(loaded.gpt, tok)  # refuses what no layout expresses before any write
    training = training_facts(read_checkpoint(ckpt_path), ckpt_path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"--out_dir {out_dir}: a folder above it is a file") from None
    except OSError as e:  # a read-only or full disk: name the folder, not a temporary one
        raise UserError(f"--out_dir {out_dir}: {e.strerror}") from None
    try:
        name = target.resolve().name
        write_export(staging, name, hf, loaded.gpt, tok, training, command, scores)
        if target.exists():
            target.rmdir()
        os.replace(staging, target)  # the directory appears complete, or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tokenizer = f"the {tok.spec} tokenizer ({tok.vocab_size:,} ids)"
    print(f"wrote {out_dir}: {type(hf).__name__} with {tokenizer}")


def export_gguf(ckpt_path: str, out: str, dtype: str = "f32") -> None:
    """Write a checkpoint as one GGUF file for llama.cpp and Ollama, tokenizer included: the
    gpt2 architecture for the GPT-2 layout, llama for the Llama layout.

    Args:
        ckpt_path: A checkpoint written by fit or import_hf.
        out: The .gguf file to write; it must not exist yet.
        dtype: f32 (the exact weights) or f16 (half the size) for the matrices; norms and
            biases stay f32.
    """
    from lit_gpt_scratch.interop.gguf_export import write_gguf
    from lit_gpt_scratch.interop.gguf_vocab import PRE_TOKENIZERS
    from lit_gpt_scratch.train.checkpoint_io import check_new_file

    check_new_file(out)
    loaded = load_gpt(ckpt_path)
    tok = checkpoint_tokenizer(loaded)
    arch = write_gguf(out, loaded.gpt, tok, dtype, name=Path(out).stem)
    size = Path(out).stat().st_size / 2**20
    tokenizer = f"the {tok.spec} tokenizer ({tok.vocab_size:,} ids)"
    print(f"wrote {out}: {arch} architecture, {dtype}, {size:.1f} MiB, with {tokenizer}")
    if tok.encoding._pat_str not in PRE_TOKENIZERS:
        print(
            "note: no llama.cpp pre-tokenizer splits text with this tokenizer's regex; "
            "tokenizer.ggml.pre is left out, and llama.cpp's default split may tokenize "
            "prompts otherwise"
        )


def consolidate(ckpt_path: str, out: str) -> None:
    """Gather a sharded (FSDP) checkpoint directory into one checkpoint file of the weights,
    which generate, export and fit (as a fine-tune's start) read.

    Args:
        ckpt_path: A sharded checkpoint directory (trainer.strategy FSDPStrategy with
            state_dict_type: sharded writes last.ckpt and the others as directories).
        out: The checkpoint file to write (.ckpt); it must not exist yet.
    """
    from lit_gpt_scratch.train.checkpoint_io import check_new_file

    check_new_file(out)
    if not Path(ckpt_path).is_dir():
        raise UserError(f"--ckpt_path {ckpt_path} is not a sharded checkpoint directory")
    loaded = load_sharded_gpt(ckpt_path)
    save_gpt(out, loaded.gpt, loaded.spec, loaded.tokenizer)
    print(f"wrote {out}: {loaded.gpt.num_params():,} parameters from {ckpt_path}")
