"""Each config in configs/ that copies another resolves to exactly that base plus its delta.

jsonargparse has no way for one config file to include another and override parts of its
sections: a ``config: base.yaml`` key inside a file is applied, but a section written after it
(``trainer:``) replaces the base's whole section instead of merging into it, and dotted keys
into ``class_path``/``init_args`` specs are refused. So the copies stay whole files (each runs
with one ``--config``), and this test holds each to what it claims to be: its
``--print_config`` equals that of its bases layered with ``--config``, plus its delta. A change
to 124m.yaml that is not made in 350m.yaml too (or is not meant for it: then add it to the
delta here) fails here.
"""

from __future__ import annotations

import difflib
import textwrap
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# whole configs of their own (classify-tiny's model.gpt is tiny's: tests/test_classifier.py;
# dpo-tiny's is sft-tiny's: tests/test_dpo.py)
BASES = ("tiny", "124m", "shakespeare-char", "classify-tiny", "dpo-tiny")
# copy: (the configs it is built from, layered in this order; what it changes, as YAML)
COPIES = {
    "350m": (
        ["124m"],
        """
        trainer: {logger: {init_args: {name: 350m}}}
        model:
          gpt: {init_args: {n_layer: 24, n_head: 16, d_model: 1024}}
          optimizer: {init_args: {lr: 3.0e-4}}
          lr_scheduler: {init_args: {min_lr: 3.0e-5}}
        data: {batch_size: 8}
        """,
    ),
    "774m": (
        ["124m"],
        """
        trainer: {logger: {init_args: {name: 774m}}}
        model:
          gpt: {init_args: {n_layer: 36, n_head: 20, d_model: 1280}}
          optimizer: {init_args: {lr: 2.5e-4}}
          lr_scheduler: {init_args: {min_lr: 2.5e-5}}
        data: {batch_size: 4}
        """,
    ),
    "1558m": (
        ["124m"],
        """
        trainer: {logger: {init_args: {name: 1558m}}}
        model:
          gpt: {init_args: {n_layer: 48, n_head: 25, d_model: 1600}}
          optimizer: {init_args: {lr: 2.0e-4}}
          lr_scheduler: {init_args: {min_lr: 2.0e-5}}
        data: {batch_size: 2}
        """,
    ),
    # Llama's MLP width (multiple_of 256: hidden 2048), not the overlay's 64; no biases at all
    "llama-124m": (
        ["124m", "overlays/rope", "overlays/rmsnorm", "overlays/swiglu"],
        """
        trainer: {logger: {init_args: {name: llama-124m}}}
        model:
          gpt:
            init_args:
              attention: {init_args: {bias: false}}
              mlp: {init_args: {multiple_of: 256}}
        """,
    ),
    "124m-modern": (
        ["124m", "overlays/modern"],
        """
        trainer: {logger: {init_args: {name: 124m-modern}}}
        model:
          optimizer: {init_args: {adamw_lr: 4.0e-3}}
          lr_scheduler: {init_args: {warmup_steps: 200, decay_fraction: 0.3, min_lr: 0.0}}
        """,
    ),
    "sft-tiny": (
        ["tiny"],
        """
        trainer:
          max_steps: 200
          val_check_interval: 50
          logger: {init_args: {name: sft-tiny}}
        model:
          gpt: {init_args: {vocab_size: 4100, document_mask: true, eot_id: 4095}}
          optimizer: {init_args: {lr: 3.0e-4}}
          lr_scheduler: {init_args: {warmup_steps: 20, min_lr: 3.0e-5}}
        data:
          format: chat
          sources: [stdlib-chat]
          tokenizer: stdlib-4k+chat
          data_dir: data/stdlib-chat-4k
          val_fraction: 0.05
          overlong: skip
        checkpoint: {every_n_train_steps: 100}
        samples: {every_n_steps: 0, prompt: "", max_new_tokens: 96}
        """,
    ),
    "tiny-modern": (
        ["tiny", "overlays/modern"],
        """
        trainer: {logger: {init_args: {name: tiny-modern}}}
        """,
    ),
}


def test_every_config_is_a_base_or_a_copy_with_its_delta_here():
    configs = {path.stem for path in CONFIGS.glob("*.yaml")}
    assert configs == {*BASES, *COPIES}, "a new config: add it to BASES or COPIES"


def resolved(cli, *configs: str) -> str:
    result = cli("fit", *(f"--config={c}" for c in configs), "--print_config")
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("copy", COPIES, ids=str)
def test_each_copy_is_its_bases_plus_its_delta(copy, cli):
    bases, delta = COPIES[copy]
    delta = textwrap.dedent(delta)
    claimed = resolved(cli, *(str(CONFIGS / f"{base}.yaml") for base in bases), delta)
    actual = resolved(cli, str(CONFIGS / f"{copy}.yaml"))
    claim = " + ".join(f"{base}.yaml" for base in bases) + " + its delta in tests/test_configs.py"
    diff = "".join(difflib.unified_diff(
        claimed.splitlines(keepends=True), actual.splitlines(keepends=True), claim, f"{copy}.yaml"
    ))  # fmt: skip
    assert not diff, f"configs/{copy}.yaml is no longer {claim}:\n{diff}"


def test_the_mixture_overlay_mixes_two_offline_sources(cli, monkeypatch):
    """configs/overlays/mixture.yaml on tiny.yaml: stdlib (3) and the repository's docs (1),
    both there without a network, the docs glob read from the repository root."""
    import yaml

    from lit_gpt_scratch.data.mixture import read_mixture
    from lit_gpt_scratch.data.sources import plan_sources

    overlay = CONFIGS / "overlays/mixture.yaml"
    shown = resolved(cli, str(CONFIGS / "tiny.yaml"), str(overlay))
    assert "  - path: stdlib\n    weight: 3.0\n    name: code\n" in shown
    sources = yaml.safe_load(shown)["data"]["sources"]
    entries = read_mixture(sources)
    assert [(e.name, e.path, e.weight) for e in entries] == [
        ("code", "stdlib", 3.0),
        ("docs", "docs/**/*.md", 1.0),
    ]
    monkeypatch.chdir(CONFIGS.parent)
    plan = plan_sources([entries[1].path])  # lists the files only: nothing is tokenized
    assert plan.total_bytes > 100_000 and not plan.skipped_binary
