"""Compression of tokenizers: bytes of UTF-8 text per token, on the documents ``prepare`` holds
out for validation (in-domain text no trained vocabulary has seen) and on other text sets.

    python -m lit_gpt_scratch.bench.compression --tokenizers gpt2 stdlib-4k tok.tiktoken

By default the other text set is non-English: the Chinese, Japanese and Korean UTF-8 files
that CPython ships for its codec tests (``test/cjkencodings/*-utf8.txt``), which are not
Python source and so are in no ``stdlib`` training document.
"""

from __future__ import annotations

import argparse
import glob
import sys
import sysconfig
from pathlib import Path

from lit_gpt_scratch.data.prepare import documents_with_split
from lit_gpt_scratch.data.sources import plan_sources, replace_surrogates
from lit_gpt_scratch.tokenizer.encodings import load_tokenizer

CJK = str(Path(sysconfig.get_paths()["stdlib"]) / "test" / "cjkencodings" / "*-utf8.txt")


def held_out_documents(sources: list[str], val_fraction: float) -> list[str]:
    """The documents ``prepare`` (and ``train_tokenizer``) hold out at ``val_fraction``."""
    chunks = plan_sources(sources, "text").chunks
    return [replace_surrogates(t) for val, t in documents_with_split(chunks, val_fraction) if val]


def bytes_per_token(tokenizer, texts: list[str]) -> tuple[int, int]:
    """(UTF-8 bytes, tokens) over ``texts``, each encoded on its own (no end-of-text)."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return n_bytes, sum(len(tokenizer.encode_ordinary(t)) for t in texts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizers", nargs="+", default=["gpt2", "stdlib-4k", "bytes"])
    parser.add_argument("--sources", nargs="+", default=["stdlib"])
    parser.add_argument("--val_fraction", type=float, default=0.02, help="as data.val_fraction")
    parser.add_argument("--texts", nargs="*", default=[f"cjk={CJK}"], help="NAME=GLOB ...")
    args = parser.parse_args(argv)
    sets = {"held-out val documents": held_out_documents(args.sources, args.val_fraction)}
    for spec in args.texts:
        name, pattern = spec.split("=", 1)
        files = sorted(glob.glob(pattern))
        if not files:
            print(f"error: --texts {name}: no file matches {pattern}", file=sys.stderr)
            return 1
        sets[name] = [Path(f).read_text(encoding="utf-8") for f in files]
    argv = sys.argv[1:] if argv is None else argv
    print(f"command: python -m lit_gpt_scratch.bench.compression {' '.join(argv)}")
    for name, texts in sets.items():
        size = sum(len(t.encode("utf-8")) for t in texts)
        print(f"{name}: {len(texts)} documents, {size:,} bytes")
    print()
    print("| tokenizer | ids | " + " | ".join(f"{n}: bytes/token" for n in sets) + " |")
    print("|---|---:|" + "---:|" * len(sets))
    for spec in args.tokenizers:
        tok = load_tokenizer(spec)
        cells = []
        for texts in sets.values():
            n_bytes, n_tokens = bytes_per_token(tok, texts)
            cells.append(f"{n_bytes / n_tokens:.2f} ({n_tokens:,} tokens)")
        print(f"| `{spec}` | {tok.vocab_size:,} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
