"""``stdlib-chat``: an instruction set generated from the running Python's standard library.

Every machine with Python can build it offline, as ``stdlib`` is the offline pretraining
corpus. From each public top-level function with a docstring in a public, non-test module
(read with ``ast``: nothing is imported), two conversations:

- "Write a function `name(args)` that <first line of its docstring>" -> the function's source,
  when that source is at most ``MAX_SOURCE_CHARS`` characters;
- "What does `module.name` do?" -> the docstring's first paragraph.

The order is the files' sorted order, so the set is deterministic for one Python version (the
data directory records the version). The held-out split is prepare's, by conversation.
"""

from __future__ import annotations

import ast
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from lit_gpt_scratch.data.sources import stdlib_files

STDLIB_CHAT = "stdlib-chat"
MAX_SOURCE_CHARS = 600  # ~300 stdlib-4k tokens: most fit a 256-token window with the question
MAX_ANSWER_CHARS = 600


def stdlib_chat_version() -> str:
    """What the set depends on: the Python version whose library it is read from."""
    return f"python {sys.version.split()[0]}"


def stdlib_conversations() -> Iterator[tuple[str, list[dict]]]:
    """(where, messages) for every conversation of the set, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_files():
        module = _module_name(path.relative_to(root))
        if module is None:
            continue
        try:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue  # a file this Python cannot parse (a test fixture, a lib2to3 sample)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from _function_conversations(module, node, text)


def _module_name(relative: Path) -> str | None:
    """The dotted name of a public, non-test module; None for the others."""
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or any(p.startswith("_") or p.startswith("test") or p == "idlelib" for p in parts):
        return None
    return ".".join(parts)


def _function_conversations(module: str, node, text: str) -> Iterator[tuple[str, list[dict]]]:
    doc = ast.get_docstring(node)
    if node.name.startswith("_") or not doc or not doc.strip():
        return
    where = f"{STDLIB_CHAT}: {module}.{node.name}"
    first_line = doc.strip().splitlines()[0].strip()
    source = ast.get_source_segment(text, node)
    if first_line and source and len(source) <= MAX_SOURCE_CHARS:
        task = first_line[0].lower() + first_line[1:]
        signature = f"{node.name}({ast.unparse(node.args)})"
        yield where, _pair(f"Write a function `{signature}` that {task}", source)
    paragraph = doc.strip().split("\n\n")[0].strip()
    if paragraph:
        yield where, _pair(f"What does `{module}.{node.name}` do?", paragraph[:MAX_ANSWER_CHARS])


def _pair(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
