"""An offline classification set from the running Python's standard library.

Each record is the start of one function (or method) of the stdlib, labelled with the package
it comes from: ``{"text": "def get_event_loop(self):\\n    ...", "label": "asyncio"}``. Which
package a function belongs to shows in its names, its docstring and the calls it makes, so a
model pretrained on the stdlib has something to find; a classifier that learns nothing scores
one in ``len(packages)``. Every machine with Python builds it; the held-out split is chosen
by a hash of each function's module and name, so it is the same on every machine with the same
Python.
"""

from __future__ import annotations

import ast
import json
import sysconfig
import textwrap
import zlib
from pathlib import Path

from lit_gpt_scratch.errors import UserError, check_at_least, check_in
from lit_gpt_scratch.files import write_atomic

PACKAGES = ("asyncio", "email", "unittest", "xml")


def stdlib_functions(package: str, max_lines: int) -> list[tuple[str, str]]:
    """(``module:qualified name``, the first ``max_lines`` lines of its source, dedented) of
    each function of the stdlib ``package``, its own tests left out, in file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not (root / package).is_dir():
        raise UserError(f"package {package!r} is not in this Python's standard library ({root})")
    found = []
    for path in sorted((root / package).rglob("*.py")):
        inside = path.relative_to(root).parts
        if any(part in ("test", "tests") for part in inside):
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:  # a few stdlib files are deliberately broken (lib2to3 data)
            continue
        module = ".".join(inside).removesuffix(".py")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                segment = ast.get_source_segment(source, node, padded=True) or ""
                lines = textwrap.dedent(segment).splitlines()[:max_lines]
                found.append((f"{module}:{node.lineno}:{node.name}", "\n".join(lines)))
    return found


def classification_set(
    out: str,
    packages: tuple[str, ...] = PACKAGES,
    per_class: int = 400,
    max_lines: int = 8,
    val_percent: int = 10,
) -> None:
    """Write a classification set from the standard library: ``out/train.jsonl`` and
    ``out/val.jsonl``, whose records are the first lines of a stdlib function labelled with
    its package (``configs/classify-tiny.yaml`` trains on it).

    Args:
        out: Folder to write into (made if missing; the two files are replaced whole).
        packages: Stdlib packages, one class each (the config's ``data.class_names``).
        per_class: Functions of each package, at most (the first in file order): equal
            counts, so chance is ``1 / len(packages)``.
        max_lines: Lines of each function's source kept.
        val_percent: Share of each class held out for ``val.jsonl``, by a hash of its name.
    """
    check_at_least("per_class", per_class, 1)
    check_at_least("max_lines", max_lines, 1)
    check_in("val_percent", val_percent, 1, 100)
    if len(packages) < 2 or len(set(packages)) != len(packages):
        raise UserError(f"packages must name two or more distinct packages, got {list(packages)}")
    splits: dict[str, list[str]] = {"train": [], "val": []}
    counts = []
    for package in packages:
        functions = stdlib_functions(package, max_lines)[:per_class]
        counts.append(f"{package} {len(functions)}")
        for name, text in functions:
            held_out = zlib.crc32(name.encode()) % 100 < val_percent
            record = json.dumps({"text": text, "label": package}, ensure_ascii=False)
            splits["val" if held_out else "train"].append(record)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        write_atomic(folder / f"{split}.jsonl", "".join(f"{r}\n" for r in records))
    print(
        f"wrote {len(splits['train'])} train and {len(splits['val'])} val records to {folder} "
        f"({', '.join(counts)})"
    )
