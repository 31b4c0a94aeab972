"""Shared test helpers: small corpora written to tmp dirs, and reading shards back."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lit_gpt_scratch.data.prepare as prepare_module
import lit_gpt_scratch.data.sources as sources_module


@pytest.fixture
def cli(capsys, tmp_path, monkeypatch):
    """Run the command line in this process, in tmp_path (runs land in tmp_path/checkpoints,
    the configs' relative save_dir): (exit code, stdout, stderr) as a CompletedProcess."""
    from lit_gpt_scratch.cli.main import main

    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess:
        try:
            with log_lines_to_stderr():
                code = main(list(args))
        except SystemExit as e:  # jsonargparse exits after --print_config and --help
            code = e.code or 0
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@contextlib.contextmanager
def log_lines_to_stderr():
    """Log lines into this test's captured stderr, as a child process prints them there.

    Lightning's own handler holds the stderr of the moment Lightning was imported, often an
    earlier test's; and pytest's handlers on the root logger keep its records to themselves.
    """
    handlers = [
        h
        for name in ("lightning", "lightning.pytorch", "lightning.fabric")
        for h in logging.getLogger(name).handlers
        if type(h) is logging.StreamHandler
    ]
    streams = [h.stream for h in handlers]
    for handler in handlers:  # not setStream: it flushes the old stream, maybe closed by now
        handler.stream = sys.stderr
    ours = logging.StreamHandler(sys.stderr)
    ours.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(ours)
    root.setLevel(logging.INFO)  # as the command line's logging.basicConfig sets it
    try:
        yield
    finally:
        root.setLevel(level)
        root.removeHandler(ours)
        for handler, stream in zip(handlers, streams, strict=True):
            handler.stream = stream


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Many small chunks and a checkpoint after each, so tests cross every boundary."""
    monkeypatch.setattr(sources_module, "CHUNK_BYTES", 256)
    monkeypatch.setattr(prepare_module, "CHECKPOINT_SECONDS", 0.0)


def write_text_corpus(root: Path, docs: list[str | bytes]) -> Path:
    """One file per document, named so that sorted order is list order."""
    root.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        data = doc if isinstance(doc, bytes) else doc.encode("utf-8")
        (root / f"doc_{i:05d}.txt").write_bytes(data)
    return root


def read_split(data_dir: Path, split: str) -> np.ndarray:
    """A split's whole token stream, read back through np.memmap as training will."""
    meta = json.loads((Path(data_dir) / "meta.json").read_text())
    parts = [
        np.memmap(Path(data_dir) / s["file"], dtype=meta["dtype"], mode="r")
        for s in meta["splits"][split]
    ]
    for part, shard in zip(parts, meta["splits"][split], strict=True):
        assert len(part) == shard["tokens"]
    return np.concatenate(parts) if parts else np.empty(0, meta["dtype"])


def expected_splits(encode, eot: int, docs: list[str], val_every: int) -> dict[str, list[int]]:
    """The reference: each non-empty document encoded + EOT, routed by index as documented."""
    out = {"train": [], "val": []}
    kept = [d for d in docs if d]
    for i, doc in enumerate(kept):
        out["val" if i % val_every == 1 else "train"] += list(encode(doc)) + [eot]
    return out


def dir_bytes(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(data_dir).iterdir())}


LOREM = [
    "The quick brown fox jumps over the lazy dog.\n" * (i % 7 + 1) + f"Document {i}.\r\n"
    for i in range(60)
]


ROOT = Path(__file__).resolve().parents[1]


def small_run_args(corpus: Path, data_dir: Path, **overrides) -> list[str]:
    """configs/tiny.yaml shrunk to seconds: a 1-layer width-32 model on a small corpus."""
    args = {
        "data.sources": f"[{corpus}]",
        "data.data_dir": str(data_dir),
        "data.block_size": "32",
        "data.batch_size": "4",
        "data.val_fraction": "0.2",
        "data.val_windows": "8",
        "data.prepare_workers": "0",
        "model.gpt.init_args.n_layer": "1",
        "model.gpt.init_args.d_model": "32",
        "model.gpt.init_args.n_head": "2",
        "trainer.max_steps": "6",
        "trainer.val_check_interval": "3",
        "trainer.limit_val_batches": "2",
        "trainer.enable_progress_bar": "false",
        "trainer.enable_model_summary": "false",
        "samples.every_n_steps": "3",
        "samples.max_new_tokens": "8",
        "checkpoint.every_n_train_steps": "3",
        "throughput.every_n_steps": "2",
        "trainer.log_every_n_steps": "1",
    }
    args.update(overrides)
    return ["--config", str(ROOT / "configs/tiny.yaml"), *(f"--{k}={v}" for k, v in args.items())]


def last_checkpoint(root: Path, version: int = 0) -> dict:
    """The ``last.ckpt`` of run ``version_<version>`` of the tiny config under ``root``."""
    import torch

    path = Path(root) / f"checkpoints/tiny/version_{version}/checkpoints/last.ckpt"
    return torch.load(path, map_location="cpu", weights_only=True)


def data_position(ckpt: dict) -> dict:
    """The training sampler's saved position (epoch, index, ...) in a checkpoint."""
    [state] = [v for k, v in ckpt.items() if k.endswith("TokenDataModule")]
    return state["sampler"]


def save_weights_only(path: Path, d_model: int = 32, block_size: int = 32) -> Path:
    """A weights-only checkpoint (as import_hf writes) of a 1-layer GPT on the stdlib-4k ids."""
    from lit_gpt_scratch.model.build import build_gpt
    from lit_gpt_scratch.train.checkpoint_files import save_gpt

    spec = {
        "class_path": "lit_gpt_scratch.model.gpt.GPT",
        "init_args": {"vocab_size": 4096, "block_size": block_size, "n_layer": 1, "n_head": 2,
                      "d_model": d_model},
    }  # fmt: skip
    save_gpt(path, build_gpt(spec), spec, "stdlib-4k")
    return path


@pytest.fixture
def mount_tmpfs():
    """mount(path, size, *options): a tmpfs of that size on ``path`` (options such as "ro"),
    unmounted after the test; skipped where mounting is not allowed."""
    mounted = []

    def mount(path: Path, size: str, *options: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        opts = ",".join([f"size={size}", *options])
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True
        )
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=True)
