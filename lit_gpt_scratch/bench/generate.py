"""Generation speed: tokens/s with and without the KV cache, for the model of each config.

Builds each config's GPT with random weights (speed does not depend on them), then times
``generate`` for ``--new_tokens`` tokens after a ``--prompt_tokens``-token prompt, greedy, with
no early stop, once with the KV cache and once without. One short warm-up run first; each row
is the median of ``--repeat`` runs.

    python -m lit_gpt_scratch.bench.generate                                  # tiny, 124m on CPU
    python -m lit_gpt_scratch.bench.generate --configs '[configs/124m.yaml]' --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from lit_gpt_scratch.bench.tokenize import cpu_model
from lit_gpt_scratch.model.build import build_gpt, gpt_spec_from_config
from lit_gpt_scratch.model.generate import generate


def time_generation(model, prompt, new_tokens: int, use_cache: bool, repeat: int) -> float:
    """Median seconds to generate ``new_tokens`` tokens."""
    generate(model, [prompt], 4, temperature=0, use_cache=use_cache)  # warm-up
    on_gpu = next(model.parameters()).is_cuda
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = generate(model, [prompt], new_tokens, temperature=0, use_cache=use_cache)
        if on_gpu:  # kernels run asynchronously: wait for the last one
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        assert len(out[0]) == new_tokens
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["configs/tiny.yaml", "configs/124m.yaml"])
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--prompt_tokens", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    where = cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(
        f"device: {where} ({os.cpu_count()} cores) · Python {platform.python_version()} · "
        f"torch {torch.__version__} · threads {torch.get_num_threads()}"
    )
    print(f"command: python -m lit_gpt_scratch.bench.generate {shlex.join(argv)}".rstrip())
    print(
        f"greedy, batch 1, {args.prompt_tokens}-token prompt, up to {args.new_tokens} new "
        f"tokens (the model's block_size permitting), fp32, median of {args.repeat}"
    )
    print()
    print("| config | parameters | new tokens | KV cache | tokens/s | seconds |")
    print("|---|---:|---:|---|---:|---:|")
    torch.manual_seed(0)
    for config in args.configs:
        spec = gpt_spec_from_config(config)
        model = build_gpt(spec, device=device).eval()
        prompt = torch.randint(0, model.vocab_size, (args.prompt_tokens,)).tolist()
        new_tokens = min(args.new_tokens, model.block_size - args.prompt_tokens)
        rows = []
        for use_cache in (True, False):
            seconds = time_generation(model, prompt, new_tokens, use_cache, args.repeat)
            rows.append(seconds)
            print(
                f"| {Path(config).stem} | {model.num_params() / 1e6:,.1f}M | {new_tokens} | "
                f"{'on' if use_cache else 'off'} | {new_tokens / seconds:,.1f} | {seconds:,.2f} |"
            )
        print(f"| {Path(config).stem} | | | speed-up | {rows[1] / rows[0]:,.1f}× | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
