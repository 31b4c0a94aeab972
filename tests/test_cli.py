"""The command line: dispatch, layered configs, overrides, one-line errors, the real tiny config."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import LOREM, read_split, write_text_corpus

from lit_gpt_scratch.cli.main import main
from lit_gpt_scratch.data.sources import stdlib_files
from lit_gpt_scratch.tokenizer import encodings as tok_module
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def run_command(*args: str) -> subprocess.CompletedProcess:
    """The command line in a process of its own (the ``cli`` fixture runs it in this one)."""
    return subprocess.run(
        [sys.executable, "-m", "lit_gpt_scratch", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_top_level_help_lists_subcommands():
    result = run_command("--help")
    assert result.returncode == 0
    for name in ("prepare", "generate", "import_hf", "export"):
        assert name in result.stdout
    assert run_command().returncode == 2
    bad = run_command("frobnicate")
    assert bad.returncode == 2 and "unknown subcommand 'frobnicate'" in bad.stderr


def test_prepare_help_shows_the_data_options(cli):
    result = cli("prepare", "--help")
    assert result.returncode == 0
    for key in ("--data.sources", "--data.tokenizer", "--data.data_dir", "--data.val_fraction"):
        assert key in result.stdout


def test_training_config_with_layered_configs_and_overrides(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    corpus = write_text_corpus(tmp_path / "corpus", LOREM)
    base = tmp_path / "base.yaml"
    base.write_text(
        "seed_everything: 1\ntrainer: {max_steps: 10}\nmodel: {gpt: {n_layer: 2}}\n"
        f"data:\n  sources: [{corpus}]\n  data_dir: {tmp_path / 'ignored'}\n  block_size: 8\n"
    )
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("data:\n  val_fraction: 0.25\n")
    out = tmp_path / "out"
    code = main(
        [
            "prepare",
            "--config",
            str(base),
            "--config",
            str(overlay),
            f"--data.data_dir={out}",
            "--data.prepare_workers=0",
            "--progress=false",
        ]
    )
    assert code == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["documents"] == {"train": 45, "val": 15}  # the overlay's val_fraction
    assert not (tmp_path / "ignored").exists()  # the override won over the base config
    assert f"prepared {out}: train" in caplog.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.nope=1"], r"unrecognized arguments: --data\.nope=1"),
        (["--data.block_size=abc"], r'"data\.block_size": Expected a .*int.* abc'),
        (["--config", "missing.yaml"], r"missing\.yaml"),
        (["--data.sources=[no/such/dir]"], r"source .*no/such/dir: no such file or directory"),
        (["--data.tokenizer=gpt9"], r"unknown tokenizer 'gpt9'"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(tmp_path, cli, args, message):
    result = cli("prepare", "--data.sources=[stdlib]", f"--data.data_dir={tmp_path / 'o'}", *args)
    assert result.returncode == 1
    assert re.search(message, one_error_line(result.stderr))
    assert not (tmp_path / "o").exists()


def test_unknown_key_in_a_config_file_is_named(tmp_path, cli):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  sources: [stdlib]\n  tokenizr: gpt2\n")
    result = cli("prepare", "--config", str(config))
    assert result.returncode == 1
    assert "does not accept option 'tokenizr'" in one_error_line(result.stderr)


def test_bad_gpt2_file_hash_through_the_cli(tmp_path, monkeypatch, capsys):
    files = {n: Path(shutil.copy(p, tmp_path / n)) for n, p in tok_module.gpt2_files().items()}
    files["encoder.json"].write_bytes(files["encoder.json"].read_bytes().replace(b'"!"', b'"?"', 1))
    monkeypatch.setattr(tok_module, "gpt2_files", lambda: files)
    tok_module._gpt2.cache_clear()
    try:
        code = main(["prepare", "--data.sources=[stdlib]", f"--data.data_dir={tmp_path / 'o'}"])
    finally:
        tok_module._gpt2.cache_clear()
    assert code == 1
    line = one_error_line(capsys.readouterr().err)
    assert "encoder.json: sha256" in line and "is not the official" in line
    assert not (tmp_path / "o").exists()


def test_tiny_config_on_the_stdlib(tmp_path):
    """The quickstart job itself: the embedded corpus, two worker processes."""
    out = tmp_path / "stdlib"
    result = run_command(
        "prepare",
        "--config",
        "configs/tiny.yaml",
        f"--data.data_dir={out}",
        "--data.prepare_workers=2",
        "--progress=false",
    )
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"] == "stdlib-4k" and meta["dtype"] == "uint16"
    assert meta["tokens"]["train"] > 3_000_000 and meta["documents"]["val"] > 10
    # The first document is the first stdlib file, encoded by tiktoken itself, then EOT.
    first = stdlib_files()[0].read_bytes().decode("utf-8", "replace")
    want = load_tokenizer("stdlib-4k").encoding.encode_ordinary(first) + [4095]
    train = read_split(out, "train")
    assert np.array_equal(train[: len(want)], want)
    rerun = run_command("prepare", "--config", "configs/tiny.yaml", f"--data.data_dir={out}")
    assert rerun.returncode == 0 and "nothing to do" in rerun.stderr


CONFIGS = ROOT / "configs"
# classify-*, dpo-*: their data is a .jsonl read as fit starts, not prepared (test_classifier,
# test_dpo refuse prepare on them in one line)
NOT_PREPARED = ("classify", "dpo")
LM_CONFIGS = [c for c in sorted(CONFIGS.glob("*.yaml")) if not c.stem.startswith(NOT_PREPARED)]
TRAINING_CONFIGS = [[c] for c in LM_CONFIGS] + [
    [CONFIGS / "tiny.yaml", overlay] for overlay in sorted((CONFIGS / "overlays").glob("*.yaml"))
]


@pytest.mark.parametrize(
    "configs", TRAINING_CONFIGS, ids=["+".join(c.stem for c in cs) for cs in TRAINING_CONFIGS]
)
def test_prepare_reads_every_training_config(cli, configs):
    """prepare reads the data: section of any recipe (and any overlay stacked on one)."""
    stacked = [arg for config in configs for arg in ("--config", str(config))]
    result = cli("prepare", *stacked, "--print_config")
    assert result.returncode == 0, result.stderr
    assert "sources:" in result.stdout


def test_prepare_reads_the_whole_config_a_run_saves(cli, tmp_path):
    """A run folder's config.yaml holds every top-level key fit accepts, Lightning's own
    (weights_only, ...) among them: prepare ignores each of them."""
    saved = cli("fit", "--config", str(CONFIGS / "tiny.yaml"), "--print_config")
    assert saved.returncode == 0, saved.stderr
    config = tmp_path / "config.yaml"
    config.write_text(saved.stdout)
    result = cli("prepare", "--config", str(config), "--print_config")
    assert result.returncode == 0, result.stderr
    assert "data_dir: data/stdlib-4k" in result.stdout
