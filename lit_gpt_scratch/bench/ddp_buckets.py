"""Does a compiled DDP model still overlap its gradient all-reduce with the backward pass?

Eager DDP starts each bucket's all-reduce as soon as the bucket's gradients are ready. Under
``torch.compile`` the backward is one graph unless Dynamo's DDPOptimizer splits the forward
at bucket boundaries, so this counts the buckets (graph pieces) DDPOptimizer makes for a
config's model as it is, with activation checkpointing, and with the chunked loss. Two CPU
processes on gloo, backend ``aot_eager``: the split is Dynamo's, the same on any device.

    python -m lit_gpt_scratch.bench.ddp_buckets --configs configs/tiny.yaml --bucket_cap_mb 1
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from lit_gpt_scratch.bench.train import print_report
from lit_gpt_scratch.model.build import build_gpt, gpt_spec_from_config

VARIANTS = {
    "as configured": {},
    "activation_checkpointing": {"activation_checkpointing": True},
    "loss_chunk_size 256": {"loss_chunk_size": 256},
}


class _BucketLog(logging.Handler):
    """Keeps DDPOptimizer's "created N buckets" line."""

    def __init__(self):
        super().__init__()
        self.buckets: int | None = None

    def emit(self, record) -> None:
        words = record.getMessage().split()
        if "created" in words:
            self.buckets = int(words[words.index("created") + 1])


def _rank(rank: int, port: int, config: str, options: dict, cap: float, T: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    log = _BucketLog()
    logger = logging.getLogger("torch._dynamo.backends.distributed")
    logger.setLevel(logging.INFO)
    logger.addHandler(log)
    spec = gpt_spec_from_config(config)
    spec["init_args"].update(options, block_size=T)
    gpt = build_gpt(spec)
    model = torch.compile(DistributedDataParallel(gpt, bucket_cap_mb=cap), backend="aot_eager")
    ids = torch.randint(0, gpt.vocab_size, (1, T + 1))
    _, loss = model(ids[:, :-1], ids[:, 1:])
    loss.backward()
    if rank == 0:
        out.put(log.buckets)
    dist.destroy_process_group()


def count_buckets(config: str, options: dict, bucket_cap_mb: float, block_size: int) -> int:
    with socket.socket() as s:  # a free port on this machine
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.get_context("spawn").SimpleQueue()
    args = (port, config, options, bucket_cap_mb, block_size, out)
    mp.spawn(_rank, args=args, nprocs=2)
    return out.get()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["configs/tiny.yaml"])
    parser.add_argument("--bucket_cap_mb", type=float, default=25.0, help="DDP's default: 25")
    parser.add_argument("--block_size", type=int, default=64, help="short: the split is shape-free")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    rows = []
    for config in args.configs:
        for name, options in VARIANTS.items():
            buckets = count_buckets(config, options, args.bucket_cap_mb, args.block_size)
            rows.append(f"| {config} | {name} | {args.bucket_cap_mb:g} | {buckets} |")
    note = "graph pieces DDPOptimizer made: each all-reduces while the backward goes on"
    columns = ["config", "model", "#bucket MB", "#compiled buckets"]
    print_report(argv, "ddp_buckets", torch.device("cpu"), note, columns, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
