"""Build a GPT from its YAML form (``class_path`` + ``init_args``), exactly as LightningCLI does."""

from __future__ import annotations

import torch
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
