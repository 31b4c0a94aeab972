"""export end to end on a quickstart-shaped run (configs/tiny.yaml's model and its stdlib-4k
tokenizer, a few steps): transformers loads the directory with its tokenizer, and greedy
generation through it equals ``generate`` on the checkpoint, token for token."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import LOREM, small_run_args, write_text_corpus

from lit_gpt_scratch.model.generate import generate
from lit_gpt_scratch.train.checkpoint_files import load_gpt

transformers = pytest.importorskip("transformers")
TINY_MODEL = {"model.gpt.init_args.n_layer": "4", "model.gpt.init_args.d_model": "128"}
TINY_MODEL["model.gpt.init_args.n_head"] = "4"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny config's model trained 6 steps: its last checkpoint."""
    root = tmp_path_factory.mktemp("run")
    corpus = write_text_corpus(root / "corpus", LOREM * 3)
    args = small_run_args(corpus, root / "data", **TINY_MODEL)
    fit = subprocess.run(
        [sys.executable, "-m", "lit_gpt_scratch", "fit", *args],
        cwd=root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    return root / "checkpoints/tiny/version_0/checkpoints/last.ckpt"


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf_tiny"
    result = subprocess.run(
        [sys.executable, "-m", "lit_gpt_scratch", "export", f"--ckpt_path={run}",
         f"--out_dir={out}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GPT2LMHeadModel with the stdlib-4k tokenizer (4,096 ids)" in result.stdout
    return out


def test_transformers_generates_what_generate_does(run, exported, cli):
    model = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    loaded = load_gpt(run)
    for prompt in ("    def", "Lorem ipsum dolor", "<|endoftext|> sit"):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            theirs = model.generate(ids, max_new_tokens=20, do_sample=False)[0, ids.size(1) :]
        ours = generate(loaded.gpt, [ids[0].tolist()], 20, temperature=0)[0]
        assert theirs.tolist()[: len(ours)] == ours  # HF stops at eos; ours too
        with torch.no_grad():
            mine, _ = loaded.gpt(ids)
            assert torch.allclose(model(ids).logits, mine, atol=1e-4, rtol=0)
        printed = cli(
            "generate", f"--ckpt_path={run}", f"--prompt={prompt}", "--max_new_tokens=20",
            "--temperature=0", "--device=cpu",
        )  # fmt: skip
        assert printed.returncode == 0, printed.stderr
        text = tokenizer.decode(theirs, skip_special_tokens=True)
        assert printed.stdout == text + "\n"  # the continuation


def test_config_and_generation_config_carry_the_tokenizer_ids(exported):
    config = json.loads((exported / "config.json").read_text())
    generation = json.loads((exported / "generation_config.json").read_text())
    assert config["vocab_size"] == 4096
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert config[key] == generation[key] == 4095  # stdlib-4k's <|endoftext|>
    assert generation["top_k"] == 200 and generation["temperature"] == 0.8


def test_model_card_states_the_facts(run, exported):
    card = (exported / "README.md").read_text()
    ckpt = torch.load(run, map_location="cpu", weights_only=True)
    assert "# hf_tiny" in card and "`GPT2LMHeadModel`" in card
    assert f"{load_gpt(run).gpt.num_params():,} parameters" in card
    assert "4 layers, d_model 128, 4 heads" in card
    assert "`stdlib-4k`: 4,096 ids" in card and "`<|endoftext|>` = 4095" in card
    assert f"data sources: {run.parents[4] / 'corpus'}" in card
    assert f"tokens seen in training: {6 * 4 * 32:,}" in card  # steps x batch x block
    assert f"optimizer steps: {ckpt['global_step']}" in card
    assert "final val loss: " in card and "final val loss: not" not in card
    assert "final val bits per byte: " in card and "per byte: not" not in card
    assert f"export --ckpt_path={run} --out_dir={exported}" in card


def test_evaluate_scores_go_into_the_card(run, tmp_path, cli):
    results = tmp_path / "scores.json"
    results.write_text(
        json.dumps({"tasks": {"arc_easy": {"acc": 0.25, "acc_stderr": 0.1, "n": 8}}})
    )
    out = tmp_path / "hf"
    result = cli("export", f"--ckpt_path={run}", f"--out_dir={out}", f"--eval_results={results}")
    assert result.returncode == 0, result.stderr
    assert "| arc_easy | acc | 0.2500 | 0.1000 | 8 |" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read it (No such file or directory)"),
        ("{not json", "not JSON (expected an evaluate --out file)"),
        ('{"checkpoint": "x"}', "no 'tasks' (expected an evaluate --out file)"),
    ],
)
def test_bad_eval_results_is_one_line_and_writes_nothing(run, tmp_path, cli, content, message):
    results = tmp_path / "scores.json"
    if content is not None:
        results.write_text(content)
    out = tmp_path / "hf"
    result = cli("export", f"--ckpt_path={run}", f"--out_dir={out}", f"--eval_results={results}")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: --eval_results {results}: {message}"
    assert not out.exists() and not list(Path(tmp_path).glob(".hf.*"))


def test_a_tokenizer_larger_than_the_model_is_refused(tmp_path, cli):
    from lit_gpt_scratch.model.build import build_gpt
    from lit_gpt_scratch.train.checkpoint_files import save_gpt

    spec = {"class_path": "lit_gpt_scratch.model.gpt.GPT", "init_args": {
        "vocab_size": 100, "block_size": 8, "n_layer": 1, "n_head": 2, "d_model": 8}}  # fmt: skip
    save_gpt(tmp_path / "m.ckpt", build_gpt(spec), spec, "bytes")
    result = cli("export", f"--ckpt_path={tmp_path / 'm.ckpt'}", f"--out_dir={tmp_path / 'hf'}")
    assert result.stderr.strip() == (
        "error: tokenizer 'bytes' has 257 ids, more than the model's vocab_size 100"
    )
    assert result.returncode == 1 and not (tmp_path / "hf").exists()
