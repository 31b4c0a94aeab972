"""What a LoRA run's checkpoints hold, and how they name the base model they adapt.

A LoRA fine-tune starts from a base checkpoint (``fit --ckpt_path <base>``). Its own
checkpoints record that base under ``lora_base``: the file's absolute path and a fingerprint
(SHA-256) of its GPT weights. With ``model.lora.save: adapters`` (the default) they hold only
the adapters' weights, with their optimizer state and the rest of the training state, and
``lora_adapters_only: true``; whoever reads one (a resume, ``generate``, ``export``) reads the
base weights again from the recorded file and refuses it if its fingerprint changed.
``save: full`` keeps every weight (and so does a sharded FSDP save: its shards are read back
against the whole model).

Works on checkpoint dicts only: ``checkpoint_files`` reads the files.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from lit_gpt_scratch.model.lora import LoRA, is_adapter

BASE_KEY = "lora_base"  # {"path": ..., "fingerprint": ...}
ADAPTERS_ONLY_KEY = "lora_adapters_only"
PREFIX = "gpt."  # the GPT's keys in a LitGPT state dict


def fingerprint(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a GPT's weights, in name order."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def base_record(path: str | Path, weights: dict[str, torch.Tensor]) -> dict:
    """The ``lora_base`` entry of a run started from the checkpoint at ``path``."""
    return {"path": str(Path(path).resolve()), "fingerprint": fingerprint(weights)}


def saved_lora(ckpt: dict) -> dict | None:
    """The ``model.lora`` settings a checkpoint was trained with, or None (not a LoRA run)."""
    lora = (ckpt.get("hyper_parameters") or {}).get("lora")
    return lora_settings(lora) if lora is not None else None


def lora_settings(lora) -> dict:
    """``model.lora`` as a plain dict (from a LoRA, a jsonargparse Namespace or a dict)."""
    if isinstance(lora, LoRA):
        return dataclasses.asdict(lora)
    if hasattr(lora, "as_dict"):
        return lora.as_dict()
    return dict(lora)


def is_adapters_only(ckpt: dict) -> bool:
    return bool(ckpt.get(ADAPTERS_ONLY_KEY))


def keep_adapters_only(checkpoint: dict) -> None:
    """Drop the frozen GPT weights from a checkpoint about to be saved, in place."""
    state = checkpoint["state_dict"]
    checkpoint["state_dict"] = {
        key: value for key, value in state.items() if not key.startswith(PREFIX) or is_adapter(key)
    }
    checkpoint[ADAPTERS_ONLY_KEY] = True


def settings_difference(saved: dict | None, configured: dict | None) -> str | None:
    """The first ``model.lora`` setting in which a checkpoint and the config differ, or None.
    ``save`` may differ: it changes what later checkpoints hold, not what trains."""
    if saved is None and configured is None:
        return None
    if saved is None:
        return "model.lora is null in the checkpoint, set in the config"
    if configured is None:
        return (
            "model.lora is set in the checkpoint, null in the config (generate and export "
            "read the checkpoint with its adapters merged)"
        )
    for key in sorted(set(saved) | set(configured)):
        if key == "save":
            continue
        a, b = saved.get(key), configured.get(key)
        if (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b):
            return f"model.lora.{key} is {a!r} in the checkpoint, {b!r} in the config"
    return None
