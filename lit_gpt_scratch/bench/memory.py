"""Resident memory of the training data path over a token file larger than the memory allowed.

Writes a synthetic ``data_dir`` of ``--data_gb`` GB of uint16 token shards (random ids), then
reads training batches through exactly what ``fit`` uses (``TokenStream`` memory maps,
``WindowSampler``, ``TrainWindows`` and a ``DataLoader`` with ``--workers`` processes) and prints
the memory of the main process and its workers every ``--every`` batches:

- ``RssAnon``: private memory (heap, copies). It must stay flat: growth here is a leak.
- ``RssFile``: file pages currently mapped (the shards). Bounded by re-opening the maps every
  ``REOPEN_EVERY`` reads; the kernel can drop these pages whenever it needs memory.
- ``Pss``: the processes' proportional share of all their pages.

With ``--limit_mb`` (root, cgroup v1 or v2) the run happens inside a memory cgroup of that size,
smaller than the data, and its usage is printed too.

    sudo python -m lit_gpt_scratch.bench.memory --data_gb 3 --limit_mb 1024 --workers 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from lit_gpt_scratch.bench.tokenize import cpu_model
from lit_gpt_scratch.data.shards import META
from lit_gpt_scratch.data.windows import TokenStream, TrainWindows, WindowSampler

SHARD_TOKENS = 512 * 2**20  # 1 GiB of uint16 per shard
VOCAB = 50257


def write_data(data_dir: Path, gigabytes: float, vocab: int = VOCAB) -> int:
    """A data_dir of random uint16 ids below ``vocab`` (no val split); returns its size."""
    total = int(gigabytes * 2**30) // 2
    meta_path = data_dir / META
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if (meta["tokens"]["train"], meta["vocab_size"]) == (total, vocab):
            return total
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards, left = [], total
    while left:
        n = min(SHARD_TOKENS, left)
        name = f"train_{len(shards):06d}.bin"
        with open(data_dir / name, "wb") as f:
            for start in range(0, n, 2**24):
                rng.integers(0, vocab, min(2**24, n - start), dtype=np.uint16).tofile(f)
        shards.append({"file": name, "tokens": n})
        left -= n
    meta = {"dtype": "uint16", "vocab_size": vocab, "splits": {"train": shards, "val": []}}
    meta["tokens"] = {"train": total, "val": 0}
    meta_path.write_text(json.dumps(meta))
    return total


# --- memory readings ----------------------------------------------------------------------------


def _status_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    for line in rollup.read_text().splitlines() if rollup.exists() else []:
        if line.startswith("Pss:"):
            fields["Pss"] = int(line.split()[1])
    return fields


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(p) for p in text]
    return found


def memory_mb(pid: int) -> dict[str, float]:
    """Main process and the sum over its worker processes, in MB."""
    main = _status_kb(pid)
    workers = [_status_kb(c) for c in children(pid)]

    def total(key):
        return sum(w.get(key, 0) for w in workers) / 1024

    return {
        "main_anon": main["RssAnon"] / 1024,
        "workers_anon": total("RssAnon"),
        "file": (main["RssFile"] + sum(w["RssFile"] for w in workers)) / 1024,
        "pss": main.get("Pss", 0) / 1024 + total("Pss"),
        "workers": len(workers),
    }


# --- a memory cgroup ----------------------------------------------------------------------------


def enter_memory_cgroup(limit_mb: int) -> Path:
    """Move this process into a new memory cgroup limited to ``limit_mb`` (needs root)."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists():
        group = Path("/sys/fs/cgroup/lit-gpt-membench")
        group.mkdir(exist_ok=True)
        (group / "memory.max").write_text(str(limit_mb * 2**20))
    else:
        own = next(
            line.split(":", 2)[2]
            for line in Path("/proc/self/cgroup").read_text().splitlines()
            if ":memory:" in line
        )
        group = Path("/sys/fs/cgroup/memory") / own.lstrip("/") / "lit-gpt-membench"
        group.mkdir(exist_ok=True)
        (group / "memory.limit_in_bytes").write_text(str(limit_mb * 2**20))
    (group / "cgroup.procs").write_text(str(os.getpid()))
    return group


def cgroup_usage_mb(group: Path | None) -> float | None:
    if group is None:
        return None
    for name in ("memory.current", "memory.usage_in_bytes"):
        if (group / name).exists():
            return int((group / name).read_text()) / 2**20
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="/tmp/lit-gpt-membench")
    parser.add_argument("--data_gb", type=float, default=3.0)
    parser.add_argument("--limit_mb", type=int, default=0, help="memory cgroup size (0: none)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--block_size", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=40_000)
    parser.add_argument("--every", type=int, default=5_000)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    tokens = write_data(Path(args.data_dir), args.data_gb)
    written_s = time.perf_counter() - start
    group = enter_memory_cgroup(args.limit_mb) if args.limit_mb else None

    meta = json.loads((Path(args.data_dir) / META).read_text())
    stream = TokenStream(
        args.data_dir, "train", "uint16", meta["splits"]["train"], vocab_size=VOCAB
    )
    window = args.block_size + 1
    sampler = WindowSampler(len(stream), window, args.batch_size, seed=0)
    loader = DataLoader(
        TrainWindows(stream, window),
        batch_sampler=sampler,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    command = "python -m lit_gpt_scratch.bench.memory " + shlex.join(argv or sys.argv[1:])
    print(f"device: {cpu_model()} · Python {platform.python_version()} · torch {torch.__version__}")
    print(f"command: {command}")
    print(
        f"data: {tokens * 2 / 2**30:.1f} GiB ({tokens:,} uint16 tokens, {len(stream.paths)} "
        f"shards; written in {written_s:.0f} s) · memory limit: "
        f"{f'{args.limit_mb} MiB (cgroup)' if group else 'none'} · {args.workers} workers · "
        f"batches of {args.batch_size} x {window} tokens\n"
    )
    print("| batches | read so far | batches/s | main RssAnon | workers RssAnon | RssFile | PSS |"
          " cgroup usage |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    start, last_t = time.perf_counter(), time.perf_counter()
    for n, _batch in enumerate(loader, start=1):
        if n % args.every == 0 or n == args.batches:
            now = time.perf_counter()
            m = memory_mb(os.getpid())
            usage = cgroup_usage_mb(group)
            read_gb = n * args.batch_size * window * 2 / 2**30
            print(
                f"| {n:,} | {read_gb:.2f} GiB | {args.every / (now - last_t):,.0f} | "
                f"{m['main_anon']:.0f} MB | {m['workers_anon']:.0f} MB ({m['workers']}) | "
                f"{m['file']:.0f} MB | {m['pss']:.0f} MB | "
                f"{'-' if usage is None else f'{usage:.0f} MB'} |",
                flush=True,
            )
            last_t = now
        if n == args.batches:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
