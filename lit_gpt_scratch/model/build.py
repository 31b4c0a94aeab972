"""Build a GPT from its YAML form (``class_path`` + ``init_args``), exactly as LightningCLI does."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser

from lit_gpt_scratch.model.gpt import GPT


def build_gpt(spec: dict, device: str | torch.device = "cpu") -> GPT:
    """Instantiate ``spec`` (the ``model.gpt`` section of a config) through jsonargparse.

    ``device="meta"`` builds it without allocating memory (to count parameters, say).
    """
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--gpt", type=GPT)
    cfg = parser.parse_object({"gpt": spec})
    with torch.device(device):
        return parser.instantiate(cfg).gpt


def gpt_spec_from_config(path: str | Path) -> dict:
    """The ``model.gpt`` section of a training config, with ``data.block_size`` filled in as
    the CLI's link does (the config writes the context length once, under ``data``)."""
    config = yaml.safe_load(Path(path).read_text())
    spec = copy.deepcopy(config["model"]["gpt"])
    block_size = (config.get("data") or {}).get("block_size")
    if block_size is not None:
        spec.setdefault("init_args", {})["block_size"] = block_size
    return spec


# GPT options that change how the model runs, not what it computes: free to differ on resume.
EXECUTION_OPTIONS = ("activation_checkpointing", "loss_chunk_size")


def first_difference(saved, configured, prefix: str = "model.gpt") -> str | None:
    """The first setting in which two ``model.gpt`` specs differ, as ``key is A in the
    checkpoint, B in the config``; None when they describe the same model."""
    if isinstance(saved, dict) or isinstance(configured, dict):
        saved, configured = saved or {}, configured or {}  # no init_args == empty init_args
    if isinstance(saved, dict) and isinstance(configured, dict):
        for key in [*saved, *(k for k in configured if k not in saved)]:
            if key in EXECUTION_OPTIONS and prefix == "model.gpt.init_args":
                continue
            found = first_difference(saved.get(key), configured.get(key), f"{prefix}.{key}")
            if found:
                return found
        return None
    saved, configured = _plain(saved), _plain(configured)
    if saved == configured:
        return None
    return f"{prefix} is {saved!r} in the checkpoint, {configured!r} in the config"


def _plain(value):
    return list(value) if isinstance(value, tuple) else value
