"""torch.compile through a real ``fit``: no graph breaks, and no graph beyond training's and
validation's, with text samples and validation interleaved with the compiled training steps."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from conftest import LOREM, ROOT, small_run_args, write_text_corpus
from torch._dynamo.utils import counters

LLAMA = """\
model:
  gpt:
    init_args:
      attention:
        class_path: lit_gpt_scratch.model.attention.CausalSelfAttention
        init_args: {bias: false}
      mlp:
        class_path: lit_gpt_scratch.model.mlp.SwiGLU
        init_args: {bias: false}
      norm:
        class_path: lit_gpt_scratch.model.norm.RMSNorm
        init_args: {eps: 1.0e-6}
      position:
        class_path: lit_gpt_scratch.model.position.RotaryPosition
        init_args: {base: 10000.0}
"""


def layout_configs(layout: str, tmp_path) -> list[str]:
    """Configs stacked on configs/tiny.yaml (GPT-2's layout) for the Llama and modern ones."""
    if layout == "llama":  # RoPE, RMSNorm, SwiGLU, no biases, as configs/llama-124m.yaml
        overlay = tmp_path / "llama.yaml"
        overlay.write_text(LLAMA)
        return ["--config", str(overlay)]
    if layout == "modern":  # QK-norm, ReLU², RoPE, RMSNorm, untied, soft-cap, Muon, WSD
        return ["--config", str(ROOT / "configs/overlays/modern.yaml")]
    return []


@pytest.fixture
def dynamo_counters():
    """Dynamo's counters and caches, empty at the start and left empty at the end."""
    counters.clear()
    torch._dynamo.reset()
    yield counters
    counters.clear()
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "dynamic", ["false", pytest.param("true", marks=pytest.mark.slow)], ids=["static", "dynamic"]
)
@pytest.mark.parametrize(
    "layout", ["gpt2", *(pytest.param(x, marks=pytest.mark.slow) for x in ("llama", "modern"))]
)
def test_fit_compiles_two_graphs_and_never_breaks(tmp_path, cli, dynamo_counters, layout, dynamic):
    """Six bf16-mixed training steps, a text sample and downstream scores after steps 2, 4 and
    6, validation after steps 3 and 6: Dynamo captures exactly two graphs of ``GPT.forward``,
    training's and validation's (eval mode without gradients: one recompile, on the grad-mode
    guard), and reuses the training graph after each validation. Samples and downstream scores
    run eagerly and add none. No graph break, and Dynamo never gives up on a frame
    (``unimplemented``: a break, or the recompile limit of 8, which sampling through the
    compiled model used to hit with static shapes; with dynamic ones,
    ``is_causal=<expression of T>`` broke the graph inside the block loop). ``aot_eager``:
    Dynamo's counts do not depend on the backend, and inductor would spend most of the test
    generating code.
    """
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    overrides = {
        "model.compile": "true",
        "model.compile_backend": "aot_eager",
        "model.compile_dynamic": dynamic,
        "samples.every_n_steps": "2",
        "downstream.tasks": "[python_choice, python_cloze]",
        "downstream.task_dir": str(ROOT / "tests/data/tasks"),
        "downstream.every_n_steps": "2",
        "trainer.val_check_interval": "3",
        "checkpoint.every_n_train_steps": "0",
    }
    args = [*small_run_args(corpus, tmp_path / "data", **overrides)]
    result = cli("fit", *args, *layout_configs(layout, tmp_path))
    assert result.returncode == 0, result.stderr
    seen = {
        "graph breaks": sum(dynamo_counters["graph_break"].values()),
        "gave up": sorted(why.split("\n")[0] for why in dynamo_counters["unimplemented"]),
        "unique graphs": dynamo_counters["stats"]["unique_graphs"],
        "frames": dict(dynamo_counters["frames"]),
    }
    assert seen == {
        "graph breaks": 0,
        "gave up": [],
        "unique graphs": 2,
        "frames": {"total": 2, "ok": 2},
    }


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--model.compile_mode=fastest", "model.compile_mode 'fastest' is unknown: one of default"),
        ("--model.compile_backend=nope", "model.compile_backend 'nope' is not a torch.compile"),
    ],
)
def test_a_bad_compile_option_is_one_line(tmp_path, cli, option, message):
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    result = cli("fit", *small_run_args(corpus, tmp_path / "data"), option)
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {message}")
