"""Peak memory of the loss: the whole (B, T, vocab) logits at once, against the chunked
cross-entropy (``model.gpt.init_args.loss_chunk_size``), and activation checkpointing.

Each setting runs in a fresh process: one training step (forward, backward) of a GPT with
GPT-2's 50,257-id head, and its peak memory is read: on CUDA ``max_memory_allocated``, on a
CPU the process's peak resident memory (``ru_maxrss``, the interpreter and libraries
included, the same for every row). The loss and the gradient norm must agree across rows.

    python -m lit_gpt_scratch.bench.loss_memory
    python -m lit_gpt_scratch.bench.loss_memory --batch_size 16 --block_size 1024 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from lit_gpt_scratch.bench.train import print_report, resolve_device
from lit_gpt_scratch.model.gpt import GPT

SETTINGS = [  # (loss_chunk_size, activation_checkpointing)
    (0, False),
    (2048, False),
    (512, False),
    (0, True),
    (512, True),
]


def one_step(args, chunk: int, recompute: bool) -> dict:
    device = resolve_device(args.device)
    torch.manual_seed(0)
    with device:
        gpt = GPT(vocab_size=50257, block_size=args.block_size, n_layer=args.n_layer,
                  n_head=args.d_model // 64, d_model=args.d_model, loss_chunk_size=chunk,
                  activation_checkpointing=recompute)  # fmt: skip
        idx = torch.randint(0, 50257, (args.batch_size, args.block_size + 1))
    start = time.perf_counter()
    _, loss = gpt(idx[:, :-1], idx[:, 1:])
    loss.backward()
    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in gpt.parameters()]))
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    seconds = time.perf_counter() - start
    return {"loss": loss.item(), "grad_norm": grad_norm.item(), "peak_mb": peak, "s": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--block_size", type=int, default=1024)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--n_layer", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "chunk,recompute": one setting
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if args.child:
        chunk, recompute = args.child.split(",")
        print(json.dumps(one_step(args, int(chunk), recompute == "1")))
        return 0
    rows = []
    for chunk, recompute in SETTINGS:
        out = subprocess.run(
            [sys.executable, "-m", "lit_gpt_scratch.bench.loss_memory", *argv,
             f"--child={chunk},{int(recompute)}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(
            f"| {chunk or 'off'} | {'on' if recompute else 'off'} | {r['peak_mb']:,.0f} | "
            f"{r['s']:.2f} | {r['loss']:.6f} | {r['grad_norm']:.6f} |"
        )
    logits_mb = args.batch_size * args.block_size * 50257 * 4 / 2**20
    note = (
        f"one step of a {args.n_layer}-layer, width-{args.d_model} GPT, vocab 50,257, batch "
        f"{args.batch_size} x {args.block_size} (fp32 logits alone: {logits_mb:,.0f} MiB)"
    )
    columns = ["#loss_chunk_size", "activation checkpointing", "#peak MiB", "#seconds",
               "#loss", "#grad norm"]  # fmt: skip
    print_report(argv, "loss_memory", resolve_device(args.device), note, columns, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
