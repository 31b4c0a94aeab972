"""The import direction: model/ is plain torch (no Lightning, nothing of training or files),
data/ knows nothing of the model or of training, and the command line sits on top."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lit_gpt_scratch"

# What each part may import of the project (prefixes of dotted names below lit_gpt_scratch).
ALLOWED = {
    "model": ("model", "errors"),
    # evaluate.scoring: the rolling windows named val sets share with evaluate --text (plain torch)
    "data": ("data", "errors", "files", "tokenizer", "evaluate.scoring"),
    "tokenizer": ("tokenizer", "data", "errors", "files"),
    "interop": ("interop", "model", "tokenizer", "errors", "files"),
    "train": (
        "train",
        "model",
        "errors",
        "files",
        "tokenizer",
        "evaluate.runner",
        "evaluate.tasks",
    ),
    # scoring and task files are plain torch; loading reads checkpoints as generate does
    "evaluate": (
        "evaluate",
        "model",
        "errors",
        "files",
        "devices",
        "tokenizer",
        "data.sources",
        "train.checkpoint_files",
    ),  # fmt: skip
}


def project_imports(path: Path) -> list[str]:
    """The lit_gpt_scratch modules a file imports, below the package (e.g. ``model.gpt``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [
            n.removeprefix("lit_gpt_scratch.") for n in names if n.startswith("lit_gpt_scratch.")
        ]
    return found


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_what_is_below_it(part):
    wrong = [
        f"{path.relative_to(PACKAGE)} imports lit_gpt_scratch.{name}"
        for path in sorted((PACKAGE / part).glob("*.py"))
        for name in project_imports(path)
        if not name.startswith(ALLOWED[part])
    ]
    assert not wrong


def test_the_model_imports_no_lightning():
    modules = [f"lit_gpt_scratch.model.{p.stem}" for p in sorted((PACKAGE / "model").glob("*.py"))]
    code = f"import sys; import {', '.join(modules)}; print('lightning' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_the_package_root_holds_only_the_shared_helpers():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "devices.py", "errors.py", "files.py"]


def test_scoring_imports_no_lightning():
    """evaluate/ (but the harness adapter, which imports lm-eval) runs without Lightning."""
    names = [
        p.stem for p in sorted((PACKAGE / "evaluate").glob("*.py")) if p.stem != "lm_eval_model"
    ]
    modules = ", ".join(f"lit_gpt_scratch.evaluate.{n}" for n in names)
    code = f"import sys; import {modules}; print('lightning' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
