"""Reading a GPT out of a checkpoint file, and writing one that training can read back.

A checkpoint is a Lightning checkpoint: a dict with

- ``state_dict``: the LightningModule's weights, the GPT's under the ``gpt.`` prefix;
- ``hyper_parameters["gpt"]``: the GPT's YAML spec (``class_path`` + ``init_args``), so the
  model is rebuilt exactly as the config built it;
- ``datamodule_hyper_parameters["tokenizer"]`` (optional): the tokenizer spec it was trained with.

``fit`` writes these, and so does ``import_hf``; ``generate`` and ``export`` read both through
``load_gpt``. Keys of a ``torch.compile``d model (``_orig_mod.``) load too. A LoRA run's
checkpoint (``hyper_parameters["lora"]``) loads with its adapters merged into the weights; one
that holds the adapters alone reads its base weights from the base checkpoint it records
(``train/lora_checkpoints.py``).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lit_gpt_scratch.errors import UserError, one_line
from lit_gpt_scratch.model.build import build_gpt
from lit_gpt_scratch.model.gpt import GPT
from lit_gpt_scratch.model.lora import LoRA, add_adapters, has_adapters, is_adapter, merge_adapters
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer
from lit_gpt_scratch.train.lora_checkpoints import (
    BASE_KEY,
    fingerprint,
    is_adapters_only,
    saved_lora,
)

PREFIX = "gpt."
SHARDED_META = "meta.pt"  # Lightning's FSDPStrategy writes the non-tensor state here
DEFAULT_TOKENIZER = "gpt2"


@dataclass
class LoadedGPT:
    gpt: GPT
    spec: dict  # the model.gpt YAML section
    tokenizer: str  # tokenizer spec recorded in the checkpoint, or gpt2
    dtype: torch.dtype = torch.float32  # of the stored weights (bf16 after bf16-true training)


def is_sharded(path: str | Path) -> bool:
    """A sharded checkpoint (FSDP's ``state_dict_type: sharded``): a directory of
    torch.distributed.checkpoint files plus ``meta.pt``, the rest of Lightning's dict."""
    path = Path(path)
    return path.is_dir() and (path / SHARDED_META).is_file() and (path / ".metadata").is_file()


def read_checkpoint(path: str | Path, sharded: bool = False) -> dict:
    """A checkpoint file's dict (tensors on the CPU); UserError if missing or damaged.

    ``sharded``: also accept a sharded checkpoint directory, returning its ``meta.pt`` (no
    weights: the strategy that wrote it reads them); otherwise such a directory is an error
    that says how to consolidate it.
    """
    path = Path(path)
    if is_sharded(path):
        if not sharded:
            raise UserError(
                f"checkpoint {path} is sharded (FSDP): make one file of it first with "
                f"python -m lit_gpt_scratch consolidate --ckpt_path {path} --out FILE"
            )
        return _read_torch_file(path / SHARDED_META, path, weights=False)
    if path.is_dir():
        raise UserError(
            f"checkpoint {path} is a directory but not a sharded checkpoint (no {SHARDED_META} "
            "and .metadata)"
        )
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    return _read_torch_file(path, path)


def _read_torch_file(file: Path, path: Path, weights: bool = True) -> dict:
    _check_checksums(file, path)
    try:
        # mmap: tensors are paged in when used, so reading a big checkpoint's metadata is cheap
        ckpt = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        reason = one_line(e, limit=200)
        raise UserError(f"checkpoint {path} is unreadable or truncated ({reason})") from None
    spec = (ckpt.get("hyper_parameters") or {}).get("gpt") if isinstance(ckpt, dict) else None
    if not isinstance(spec, dict) or (weights and "state_dict" not in ckpt):
        raise UserError(f"checkpoint {path} holds no GPT (no state_dict or hyper_parameters.gpt)")
    return ckpt


def _check_checksums(file: Path, path: Path) -> None:
    """Every record of the file (a zip archive) against its CRC-32: torch.load does not check
    them, so a flipped bit in the weights or the optimizer state would load without a word.
    Reads the whole file once: about 0.15 s for 256 MB on this project's 2-core CPU machine."""
    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UserError(f"checkpoint {path} is unreadable or truncated ({one_line(e)})") from None
    if bad is not None:
        raise UserError(f"checkpoint {path} is damaged: its record {bad} fails its checksum")


def is_weights_only(ckpt: dict) -> bool:
    """True for a checkpoint with no training state to resume (as import_hf writes)."""
    return "loops" not in ckpt and "optimizer_states" not in ckpt


def gpt_weights(ckpt: dict) -> dict[str, torch.Tensor]:
    """The GPT's tensors in a checkpoint, keyed as ``GPT.state_dict()`` keys them."""
    return {
        key[len(PREFIX) :].replace("_orig_mod.", ""): value
        for key, value in ckpt["state_dict"].items()
        if key.startswith(PREFIX)
    }


def first_mismatch(model: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str | None:
    """What first differs between a model's state dict and a checkpoint's (names, shapes)."""
    for name, tensor in model.items():
        if name not in saved:
            return f"the model's {name} is not in the checkpoint"
        if saved[name].shape != tensor.shape:
            return (
                f"{name} has shape {tuple(saved[name].shape)} in the checkpoint, "
                f"{tuple(tensor.shape)} in the model"
            )
    extra = next((name for name in saved if name not in model), None)
    return f"the checkpoint's {extra} is not in the model" if extra else None


def expected_weights(gpt: GPT, ckpt: dict) -> dict[str, torch.Tensor]:
    """The part of ``gpt``'s state dict that ``ckpt`` must hold: all of it, except for a model
    with adapters: a base model's checkpoint holds its weights without the adapters, and a
    LoRA run's adapters-only checkpoint the adapters alone."""
    state = gpt.state_dict()
    if not has_adapters(gpt):
        return state
    if saved_lora(ckpt) is None:
        return {k: v for k, v in state.items() if not is_adapter(k)}
    if is_adapters_only(ckpt):
        return {k: v for k, v in state.items() if is_adapter(k)}
    return state


def check_weights_fit(gpt: GPT, ckpt: dict, path: str | Path) -> None:
    """UserError naming the first mismatching parameter when the checkpoint is another model."""
    mismatch = first_mismatch(expected_weights(gpt, ckpt), gpt_weights(ckpt))
    if mismatch:
        raise UserError(f"checkpoint {path} holds another architecture: {mismatch}")


def first_nonfinite_weight(ckpt: dict) -> str | None:
    """The GPT name of the first checkpoint tensor holding a NaN or an infinity, or None. A
    flipped bit can make a weight NaN and leave the file valid: reading finds no damage."""
    for name, tensor in gpt_weights(ckpt).items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            return name
    return None


def check_weights_finite(ckpt: dict, path: str | Path) -> None:
    """UserError naming the first non-finite weight: such a checkpoint would load, then train
    or sample nothing but NaN (training never saves one: LitGPT refuses it)."""
    bad = first_nonfinite_weight(ckpt)
    if bad is not None:
        raise UserError(
            f"checkpoint {path}: parameter {bad} holds NaN or infinity (the file is damaged): "
            "use an older checkpoint"
        )


def load_weights(gpt: GPT, ckpt: dict, path: str | Path) -> None:
    """Copy a checkpoint's GPT weights into ``gpt``; UserError naming the file if they differ."""
    check_weights_fit(gpt, ckpt, path)  # it holds exactly the keys expected_weights names
    partial = len(expected_weights(gpt, ckpt)) < len(gpt.state_dict())  # base or adapters
    gpt.load_state_dict(gpt_weights(ckpt), strict=not partial)


def read_lora_base(ckpt: dict, path: str | Path) -> dict:
    """The base checkpoint an adapters-only checkpoint (at ``path``) records, read and checked:
    UserError if it is gone or its weights are no longer the ones the adapters were trained on."""
    record = ckpt.get(BASE_KEY) or {}
    base_path = record.get("path")
    if not base_path:
        raise UserError(f"checkpoint {path} holds LoRA adapters but records no base checkpoint")
    if not Path(base_path).exists():
        raise UserError(
            f"checkpoint {path} holds LoRA adapters of the base checkpoint {base_path}, which "
            "no longer exists: put it back there (the adapters alone are not a model)"
        )
    base = read_checkpoint(base_path)
    if fingerprint(gpt_weights(base)) != record.get("fingerprint"):
        raise UserError(
            f"checkpoint {path} holds LoRA adapters of {base_path}, whose weights have changed "
            "since (another fingerprint): the adapters fit only the weights they were trained on"
        )
    return base


def load_lora_base(gpt: GPT, ckpt: dict, path: str | Path) -> None:
    """Load the base weights an adapters-only checkpoint records into ``gpt`` (with adapters)."""
    base_path = ckpt[BASE_KEY]["path"]
    base = read_lora_base(ckpt, path)
    check_weights_finite(base, base_path)
    # a fine-tune that grew the vocabulary (chat tokens) grew the base's the same way
    load_weights(gpt, with_grown_vocabulary(gpt, base), base_path)


def with_grown_vocabulary(gpt: GPT, ckpt: dict) -> dict:
    """``ckpt`` with its embedding and head grown to ``gpt``'s larger vocabulary, the new rows
    the mean of the old (``fine_tune_start``); as it is when the vocabulary did not grow."""
    from lit_gpt_scratch.train.fine_tune_start import grow_vocabulary, vocab_of

    old_vocab = vocab_of(ckpt)
    if old_vocab is None or old_vocab >= gpt.vocab_size:
        return ckpt
    weights = grow_vocabulary(gpt_weights(ckpt), old_vocab, gpt)
    return {**ckpt, "state_dict": {PREFIX + k: v for k, v in weights.items()}}


def load_gpt(path: str | Path, device: str | torch.device = "cpu") -> LoadedGPT:
    """The GPT stored in a checkpoint file, in eval mode on ``device``."""
    return _build_and_load(read_checkpoint(path), path, device)


def _build_and_load(ckpt: dict, path: str | Path, device: str | torch.device = "cpu") -> LoadedGPT:
    spec = ckpt["hyper_parameters"]["gpt"]
    try:
        gpt = build_gpt(spec)
    except Exception as e:
        reason = one_line(e, limit=200)
        raise UserError(f"checkpoint {path}: its model spec does not build ({reason})") from None
    check_weights_finite(ckpt, path)
    lora = saved_lora(ckpt)
    if lora is not None:
        add_adapters(gpt, LoRA(**lora))
        if is_adapters_only(ckpt):
            load_lora_base(gpt, ckpt, path)
    load_weights(gpt, ckpt, path)
    if lora is not None:
        merge_adapters(gpt)  # a plain model from here on: sampling and export see no adapters
    data = ckpt.get("datamodule_hyper_parameters") or {}
    tokenizer = data.get("tokenizer") or DEFAULT_TOKENIZER
    stored = [t.dtype for t in gpt_weights(ckpt).values() if t.is_floating_point()]
    dtype = stored[0] if stored else torch.float32
    return LoadedGPT(gpt.to(device).eval(), spec, tokenizer, dtype)


def checkpoint_tokenizer(loaded: LoadedGPT, spec: str | None = None):
    """The tokenizer ``spec`` names, by default the checkpoint's; a UserError if it has ids
    the model has not."""
    tok = load_tokenizer(spec or loaded.tokenizer)
    if tok.vocab_size > loaded.gpt.vocab_size:
        raise UserError(
            f"tokenizer {tok.spec!r} has {tok.vocab_size} ids, more than the model's "
            f"vocab_size {loaded.gpt.vocab_size}"
        )
    return tok


def load_sharded_gpt(path: str | Path) -> LoadedGPT:
    """The GPT of a sharded (FSDP) checkpoint directory, gathered into one process on the CPU.

    Reads only the model's tensors (not the optimizer's), so it needs the memory of the
    weights alone. Works in a plain process: no GPU, no process group.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = read_checkpoint(path, sharded=True)
    reader = dcp.FileSystemReader(str(path))
    try:
        stored = reader.read_metadata().state_dict_metadata
    except Exception as e:
        reason = one_line(e, limit=200)
        raise UserError(f"checkpoint {path}: its shards are unreadable ({reason})") from None
    # Lightning saves {"model": state_dict, "optimizer_0": ...}; DCP flattens the keys
    template = {
        key.removeprefix("model."): torch.empty(md.size, dtype=md.properties.dtype)
        for key, md in stored.items()
        if key.startswith("model.") and isinstance(md, TensorStorageMetadata)
    }
    try:
        dcp.load({"model": template}, storage_reader=reader, no_dist=True)
    except Exception as e:
        reason = one_line(e, limit=200)
        raise UserError(f"checkpoint {path}: its shards are unreadable ({reason})") from None
    # Wrapper modules leave their names in keys; the GPT's own names are what is left.
    for wrapper in ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module."):
        template = {key.replace(wrapper, ""): value for key, value in template.items()}
    ckpt = {**meta, "state_dict": template}
    return _build_and_load(ckpt, path)


def save_gpt(
    path: str | Path, gpt: GPT, spec: dict, tokenizer: str = DEFAULT_TOKENIZER, label: str = "--out"
) -> None:
    """Write ``gpt`` as a checkpoint ``load_gpt`` and ``fit --ckpt_path`` read; never overwrites.
    A path that cannot be written is a UserError naming ``label`` (the option that gave it)."""
    import lightning

    from lit_gpt_scratch.train.checkpoint_io import atomic_torch_save, check_new_file

    path = Path(path)
    check_new_file(path, label)
    ckpt = {
        "state_dict": {PREFIX + k: v.detach().cpu() for k, v in gpt.state_dict().items()},
        "hyper_parameters": {"gpt": spec},
        "datamodule_hyper_parameters": {"tokenizer": tokenizer},
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    atomic_torch_save(ckpt, path, label)  # a file under the final name is always whole
