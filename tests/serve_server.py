"""Helpers for the tests of ``serve``: a tiny random-weight chat checkpoint, and the real
command started in its own process on a free port, waited for until /health answers."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from lit_gpt_scratch.model.build import build_gpt
from lit_gpt_scratch.train.checkpoint_files import save_gpt

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-chat"
KEY = "test-key"
BLOCK_SIZE = 64


def tiny_spec(vocab_size: int = 261) -> dict:
    return {
        "class_path": "lit_gpt_scratch.model.gpt.GPT",
        "init_args": {"vocab_size": vocab_size, "block_size": BLOCK_SIZE, "n_layer": 1,
                      "n_head": 2, "d_model": 32, "document_mask": True, "eot_id": 256,
                      "init_std": 0.3},
    }  # fmt: skip


def write_checkpoint(path: Path, tokenizer: str = "bytes+chat") -> Path:
    """Random weights (seeded), the bytes tokenizer with the chat tokens unless told."""
    spec = tiny_spec(261 if tokenizer.endswith("+chat") else 257)
    torch.manual_seed(0)
    save_gpt(path, build_gpt(spec), spec, tokenizer)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, key: str | None = KEY) -> tuple[int, dict]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post(url: str, data: bytes | dict, key: str | None = KEY) -> tuple[int, dict]:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@contextlib.contextmanager
def running_server(ckpt: Path, *options: str, timeout: float = 60.0):
    """``python -m lit_gpt_scratch serve`` on a free port: yields its base URL; stopped after."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "lit_gpt_scratch", "serve", f"--ckpt_path={ckpt}",
               f"--port={port}", "--device=cpu", *options]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"serve exited: {process.stdout.read().decode()}")
            try:
                if get(f"{url}/health", key=None)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not answer /health in time")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
