"""Tokenization throughput: ``prepare`` against raw tiktoken on the same text, in one run.

Builds a corpus of about ``--corpus_mb`` MB of plain-text files in a work directory (the running
Python's stdlib ``.py`` files copied byte for byte, repeated under ``rep000/``, ``rep001/``, ...,
file by file until the size is reached), then measures, each in a child process of its own so
that its peak resident memory is its own:

- raw: every file read and decoded up front (untimed), then one timed
  ``tiktoken.Encoding.encode_ordinary_batch(texts, num_threads=<cores>)``. It holds every text
  and every token list in memory, so on corpora over 512 MB it is timed on the first 512 MB of
  files only (the rest is still encoded, untimed, for the token check); rates are compared.
- ``prepare``: the whole pipeline end to end (planning, reading, tokenizing in worker processes,
  writing shards), peak memory of its main process and of its largest worker.

Prints the machine, versions and command, a Markdown table (MB = 10^6 source bytes) and the
ratio of the two rates, and checks that both produced the same tokens: prepare's train + val
tokens, less one EOT per document, must equal raw's total (exit status 1 if not).

    python -m lit_gpt_scratch.bench.tokenize                      # ~32 MB: the stdlib once
    python -m lit_gpt_scratch.bench.tokenize --corpus_mb 2000 --workers 8 --work_dir /scratch/b
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import logging
import multiprocessing
import os
import platform
import resource
import shlex
import shutil
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from lit_gpt_scratch.data.prepare import prepare
from lit_gpt_scratch.data.sources import decode_utf8, stdlib_files
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

MB = 10**6
RAW_CAP_BYTES = 512 * MB  # raw holds all texts and token lists at once: time it on this much


def build_corpus(corpus_dir: Path, target_bytes: int) -> list[tuple[str, int]]:
    """Copy the stdlib ``.py`` files, set after set, until ``target_bytes``: [(path, size)]."""
    root = Path(sysconfig.get_paths()["stdlib"])
    originals = stdlib_files()
    if not originals:
        raise SystemExit(f"no stdlib .py files found under {root}")
    files: list[tuple[str, int]] = []
    total = 0
    for rep in itertools.count():
        for src in originals:
            if total >= target_bytes:
                return files
            dst = corpus_dir / f"rep{rep:03d}" / src.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)  # bytes only, exactly
            size = dst.stat().st_size
            files.append((str(dst), size))
            total += size
    raise AssertionError


def batches(files: list[tuple[str, int]], max_bytes: int) -> list[list[tuple[str, int]]]:
    """Consecutive groups of files of at most ``max_bytes`` each (at least one file each)."""
    groups: list[list[tuple[str, int]]] = [[]]
    size = 0
    for path, n in files:
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append((path, n))
        size += n
    return groups


def measure_raw(files: list[tuple[str, int]], spec: str, threads: int, cap: int) -> dict:
    """Child process: time encode_ordinary_batch on the first ``cap`` bytes, count the rest."""
    enc = load_tokenizer(spec).encoding
    first, *rest = batches(files, cap)
    texts = [decode_utf8(Path(path).read_bytes()).text for path, _ in first]
    start = time.perf_counter()
    ids = enc.encode_ordinary_batch(texts, num_threads=threads)
    seconds = time.perf_counter() - start
    timed_tokens = sum(map(len, ids))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    del ids, texts
    total_tokens = timed_tokens
    for group in rest:  # untimed: only for the token check
        texts = [decode_utf8(Path(path).read_bytes()).text for path, _ in group]
        total_tokens += sum(map(len, enc.encode_ordinary_batch(texts, num_threads=threads)))
    return {
        "seconds": seconds,
        "bytes": sum(n for _, n in first),
        "tokens": timed_tokens,
        "total_tokens": total_tokens,
        "rss": peak_rss,
    }


def measure_prepare(corpus_dir: str, out_dir: str, spec: str, workers: int) -> dict:
    """Child process: ``prepare`` end to end, with the peak RSS of it and of its workers."""
    logging.getLogger("lit_gpt_scratch").setLevel(logging.ERROR)  # e.g. "val split is small"
    start = time.perf_counter()
    meta = prepare(
        sources=[corpus_dir],
        tokenizer=spec,
        data_dir=out_dir,
        val_fraction=0.005,
        block_size=1024,
        prepare_workers=workers,
        progress=False,
    )
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "bytes": meta["stats"]["source_bytes"],
        "tokens": sum(meta["tokens"].values()),
        "documents": sum(meta["documents"].values()),
        "rss_main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        # the pool has exited: the largest peak among the waited-for worker processes
        "rss_workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }


def in_child(fn, *args):
    """Run ``fn(*args)`` in a fresh (spawned) process and return its result."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return models[0] if models else platform.processor() or platform.machine()


def report(
    argv: list[str], files, raw: dict, prep: dict, threads: int, workers: int, runs: int = 1
) -> bool:
    """Print the header, the table, the ratio and the token check; True if the check passes."""
    versions = " · ".join(f"{n} {importlib.metadata.version(n)}" for n in ("tiktoken", "numpy"))
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores · Python {platform.python_version()}"
        f" · {versions}"
    )
    print(f"command: python -m lit_gpt_scratch.bench.tokenize {shlex.join(argv)}".rstrip())
    corpus_bytes = sum(n for _, n in files)
    print(f"corpus: {corpus_bytes / MB:,.1f} MB in {len(files):,} files (stdlib .py, repeated)")
    print(f"each row: the median of {runs} run(s), raw and prepare interleaved")
    print()
    raw_label = f"raw tiktoken encode_ordinary_batch (threads={threads})"
    if raw["bytes"] < corpus_bytes:
        raw_label += f", first {raw['bytes'] / MB:,.1f} MB of files only"
    main_mb, workers_mb = prep["rss_main"] / MB, prep["rss_workers"] / MB
    prep_rss = f"{max(main_mb, workers_mb):,.0f} (main {main_mb:,.0f}, worker {workers_mb:,.0f})"
    rows = [
        (raw_label, raw, f"{raw['rss'] / MB:,.0f}"),
        (f"prepare (workers={workers})", prep, prep_rss),
    ]
    print("| | MB/s | M tokens/s | seconds | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for label, m, rss in rows:
        mb_s = m["bytes"] / MB / m["seconds"]
        tok_s = m["tokens"] / 1e6 / m["seconds"]
        print(f"| {label} | {mb_s:,.1f} | {tok_s:,.2f} | {m['seconds']:,.2f} | {rss} |")
    print()
    ratio = (prep["bytes"] / prep["seconds"]) / (raw["bytes"] / raw["seconds"])
    print(f"prepare / raw = {ratio:.2f}×")
    without_eot = prep["tokens"] - prep["documents"]
    ok = without_eot == raw["total_tokens"] and prep["bytes"] == corpus_bytes
    print(
        f"token check: prepare {prep['tokens']:,} train+val tokens − {prep['documents']:,} EOT "
        f"(one per document) = {without_eot:,} {'==' if ok else '!='} raw {raw['total_tokens']:,}"
        f" over all {corpus_bytes / MB:,.1f} MB: {'OK' if ok else 'MISMATCH'}"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus_mb", type=float, default=32, help="corpus size in MB (10^6 B)")
    parser.add_argument("--workers", type=int, default=None, help="prepare workers (all cores)")
    parser.add_argument("--tokenizer", default="gpt2", help="tokenizer spec, as data.tokenizer")
    parser.add_argument("--work_dir", default=None, help="kept afterwards (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the median is shown")
    args = parser.parse_args(argv)
    threads = os.cpu_count() or 1
    workers = threads if args.workers is None else args.workers
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-tokenize-"))
    corpus, out = work / "corpus", work / "out"
    try:
        for d in (corpus, out):  # a reused work dir: start over, or prepare would be a no-op
            shutil.rmtree(d, ignore_errors=True)
        files = build_corpus(corpus, int(args.corpus_mb * MB))
        raws, preps = [], []
        for _ in range(max(1, args.repeat)):  # interleaved, so machine noise hits both alike
            raws.append(in_child(measure_raw, files, args.tokenizer, threads, RAW_CAP_BYTES))
            shutil.rmtree(out, ignore_errors=True)
            preps.append(in_child(measure_prepare, str(corpus), str(out), args.tokenizer, workers))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    raw, prep = median_run(raws), median_run(preps)
    return 0 if report(argv, files, raw, prep, threads, workers, len(raws)) else 1


def median_run(runs: list[dict]) -> dict:
    """The run with the median time (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]


if __name__ == "__main__":
    sys.exit(main())
