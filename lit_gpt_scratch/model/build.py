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
