"""The ``evaluate`` subcommand: downstream tasks and bits per byte of a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lit_gpt_scratch.devices import usable_device
from lit_gpt_scratch.errors import UserError, check_at_least
from lit_gpt_scratch.evaluate.loading import check_precision, load_scored_model
from lit_gpt_scratch.evaluate.metrics import table
from lit_gpt_scratch.evaluate.runner import encode_task, run_tasks, text_bits_per_byte
from lit_gpt_scratch.evaluate.tasks import load_tasks
from lit_gpt_scratch.files import read_utf8


def evaluate(
    ckpt_path: str,
    tasks: str | None = None,
    task_dir: str | None = None,
    text: str | None = None,
    limit: int | None = None,
    batch_size: int = 4,
    device: str = "auto",
    devices: int = 1,
    precision: str | None = None,
    out: str | None = None,
    tokenizer: str | None = None,
    progress: bool = True,
) -> None:
    """Score a checkpoint on downstream tasks (acc, acc_norm, perplexity) and on text (bpb).

    Args:
        ckpt_path: A checkpoint written by fit, import_hf or consolidate.
        tasks: Comma-separated tasks: hellaswag, arc_easy, arc_challenge, piqa, winogrande,
            lambada, or a task of your own; NAME=FILE reads a task from FILE.
        task_dir: Folder holding <task>.jsonl for each task; hf reads the named tasks from
            their Hugging Face datasets (needs the hf extra and a network).
        text: A UTF-8 text file to report bits per byte on.
        limit: Score only the first this many items of each task.
        batch_size: Items (all their choices) per forward pass.
        device: cpu, cuda, cuda:N, or auto (cuda when available).
        devices: Processes to shard the items across (one per GPU; on the CPU, gloo).
        precision: 32-true, bf16-true, 16-true, 64-true, bf16-mixed or 16-mixed; by default
            the dtype of the checkpoint's weights.
        out: Write the results as JSON to this file (it must not exist yet).
        tokenizer: Tokenizer spec; by default the one recorded in the checkpoint.
        progress: Show a progress bar per task.
    """
    if not tasks and not text:
        raise UserError("nothing to evaluate: give --tasks, --text, or both")
    check_at_least("--batch_size", batch_size, 1)
    check_at_least("--devices", devices, 1)
    if limit is not None:
        check_at_least("--limit", limit, 1)
    check_precision(precision)
    if out is not None:
        _check_out(out)
    if text is not None and not Path(text).is_file():
        raise UserError(f"--text {text} does not exist")
    device = usable_device(device)
    task_list = load_tasks(tasks, task_dir, limit) if tasks else []
    body = _text(text) if text else None

    rank, world_size, device, reduce = _processes(device, devices)
    model = load_scored_model(ckpt_path, device, precision, tokenizer)
    block = model.gpt.block_size
    encoded = [encode_task(task, model.tokenizer, block, warn=rank == 0) for task in task_list]
    shard = dict(rank=rank, world_size=world_size, reduce=reduce)
    with model.autocast():
        results = run_tasks(model.forward, encoded, device, batch_size, progress=progress, **shard)
        if text:
            bpb = text_bits_per_byte(
                model.forward, model.tokenizer, body, block, device, batch_size, **shard
            )
    if rank != 0:
        return
    rows = dict(results)
    if text:  # a row label no task name can take (a task name is a file name or --tasks word)
        rows["--text"] = {"bpb": bpb["bpb"], "loss": bpb["loss"], "n": bpb["tokens"]}
    print(table(rows))
    if out is not None:
        _write_results(out, ckpt_path, model.precision, limit, results, text, bpb if text else None)
        print(f"wrote {out}")


def _check_out(out: str) -> None:
    from lit_gpt_scratch.train.checkpoint_io import check_new_file

    check_new_file(out)


def _text(path: str) -> str:
    try:
        return read_utf8(path)
    except UnicodeDecodeError as e:
        raise UserError(f"--text {path} is not UTF-8 text (byte {e.start})") from None


def _processes(device: str, devices: int):
    """(rank, world size, this rank's device, a sum across ranks or None)."""
    if devices == 1:
        return 0, 1, torch.device(device), None
    from lightning.fabric import Fabric

    accelerator = "cuda" if device.startswith("cuda") else "cpu"
    fabric = Fabric(accelerator=accelerator, devices=devices, strategy="ddp")
    fabric.launch()
    return (
        fabric.global_rank,
        fabric.world_size,
        fabric.device,
        lambda t: fabric.all_reduce(t, reduce_op="sum"),
    )


def _write_results(out, ckpt_path, precision, limit, results, text, bpb) -> None:
    from lit_gpt_scratch.files import write_atomic

    document = {"checkpoint": str(ckpt_path), "precision": precision, "limit": limit}
    document["tasks"] = results
    if text:
        document["text"] = {"path": str(text), **bpb}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(document, indent=2) + "\n")
