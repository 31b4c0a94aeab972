"""The docs cannot rot: every command they show parses (or runs), every relative link and
anchor resolves, and the package layout page lists the package as it is.

Commands are the ``python -m lit_gpt_scratch ...`` lines (code blocks, ``\\`` continuations
joined, and inline code) of README.md, BENCHMARKS.md and docs/**/*.md, run cheaply in a temporary
folder that links ``configs`` to the repository's:

- ``fit`` / ``validate`` / ``test`` / ``predict`` and the other subcommands: ``--print_config``
  appended, exit code 0 (the whole command line is parsed and checked, nothing runs);
- ``prepare`` and ``train_tokenizer`` also run for real, on a small corpus this test writes
  (the sources, and train_tokenizer's output, overridden), and ``--help`` runs as it is;
- ``python -m lit_gpt_scratch.bench.*``: the benchmark's own ``argparse`` parser reads the
  arguments, then the benchmark stops before doing anything.

A command that is not meant to run (a synopsis with placeholders) has ``<!-- not-run -->`` on
the line before its code block, or before the line that holds it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import LOREM, log_lines_to_stderr, write_text_corpus

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").rglob("*.md"))]
NOT_RUN = "<!-- not-run -->"
LIGHTNING = {"fit", "validate", "test", "predict"}
RUN_FOR_REAL = {"prepare", "train_tokenizer"}
COMMAND = re.compile(r"(?:\bpython3? |\btorchrun\b[^`]*?)-m (lit_gpt_scratch(?:\.[\w.]+)?)(?=\s|$)")
SHELL_OPERATORS = {"&&", "||", ";", "|", ">", ">>", "&", "(", ")", "<"}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- extraction -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Snippet:
    doc: Path
    line: int  # 1-based line where the snippet starts
    text: str


def code_and_prose(doc: Path, runnable_only: bool = True) -> tuple[list[Snippet], list[Snippet]]:
    """The lines of code blocks (continuations joined) and the paragraphs outside them, each
    with its first line; with ``runnable_only``, a code block or paragraph after
    ``<!-- not-run -->`` is left out."""
    lines = doc.read_text(encoding="utf-8").split("\n")
    code: list[Snippet] = []
    prose: list[Snippet] = []
    fence = None
    skip_block = False
    paragraph: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None  # a code line ending in a backslash

    def previous_is_marker(i: int) -> bool:
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        return runnable_only and j >= 0 and lines[j].strip() == NOT_RUN

    def flush_paragraph() -> None:
        if paragraph:
            first, text = paragraph[0]
            marked = text.strip() == NOT_RUN or previous_is_marker(first - 1)
            if not (runnable_only and marked):
                prose.append(Snippet(doc, first, "\n".join(t for _, t in paragraph)))
            paragraph.clear()

    for i, line in enumerate(lines):
        stripped = line.strip()
        if fence is None and re.match(r"^(```|~~~)", stripped):
            flush_paragraph()
            fence = stripped[:3]
            skip_block = previous_is_marker(i)
            continue
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
                continue
            if skip_block:
                continue
            if pending is not None:
                start, text = pending
                text = text + " " + stripped
            else:
                start, text = i + 1, stripped
            if text.endswith("\\"):
                pending = (start, text[:-1])
            else:
                pending = None
                code.append(Snippet(doc, start, text))
            continue
        if not stripped:
            flush_paragraph()
        else:
            paragraph.append((i + 1, line))
    flush_paragraph()
    return code, prose


def inline_code(paragraph: Snippet) -> list[Snippet]:
    """Inline code spans of a paragraph (a span may cross a line break)."""
    spans = []
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", paragraph.text):
        line = paragraph.line + paragraph.text.count("\n", 0, m.start())
        spans.append(Snippet(paragraph.doc, line, " ".join(m.group(1).split())))
    return spans


@dataclass(frozen=True)
class Command:
    doc: Path
    line: int
    module: str  # lit_gpt_scratch, or lit_gpt_scratch.bench.x
    args: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{rel(self.doc)}:{self.line}"


def commands_in(snippet: Snippet) -> list[Command]:
    found = []
    for m in COMMAND.finditer(snippet.text):
        lexer = shlex.shlex(snippet.text[m.end() :], posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        args = []
        for token in lexer:
            if token in SHELL_OPERATORS:
                break
            args.append(token)
        found.append(Command(snippet.doc, snippet.line, m.group(1), tuple(args)))
    return found


def all_commands() -> list[Command]:
    out = []
    for doc in DOCS:
        code, prose = code_and_prose(doc)
        snippets = code + [span for p in prose for span in inline_code(p)]
        for snippet in sorted(snippets, key=lambda s: s.line):
            out += commands_in(snippet)
    return out


COMMANDS = all_commands()


def test_the_docs_show_commands():
    """The extraction finds the docs' commands (a broken extractor would pass every test)."""
    modules = {c.module for c in COMMANDS}
    subcommands = {c.args[0] for c in COMMANDS if c.module == "lit_gpt_scratch" and c.args}
    assert len(COMMANDS) >= 40
    assert {"fit", "validate", "prepare", "train_tokenizer", "generate", "import_hf"} <= subcommands
    assert {"export", "consolidate"} <= subcommands
    assert "lit_gpt_scratch.bench.suite" in modules


# --- running them ---------------------------------------------------------------------------


class _Parsed(Exception):
    """Raised after a benchmark's parser accepted its arguments, before the benchmark runs."""


@pytest.fixture
def docs_dir(tmp_path, monkeypatch):
    """A working folder as a user's checkout looks to the docs' commands: configs/, and the
    files the examples name (a small corpus, a trained ranks file)."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    corpus = write_text_corpus(tmp_path / "doc-corpus", LOREM)
    chats = [{"instruction": f"Count to {n}.", "input": "", "output": f"{n}."} for n in range(60)]
    (tmp_path / "doc-chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    vocabularies = ROOT / "lit_gpt_scratch/tokenizer/vocabularies"
    shutil.copyfile(vocabularies / "stdlib-4k.tiktoken", tmp_path / "tok.tiktoken")
    shutil.copyfile(vocabularies / "stdlib-4k.json", tmp_path / "tok.json")
    monkeypatch.chdir(tmp_path)
    return corpus


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    from lit_gpt_scratch.cli.main import main

    try:
        with log_lines_to_stderr():
            code = main(args)
    except SystemExit as e:  # jsonargparse exits after --print_config and --help
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, (out + err)[-3000:]


def parse_bench(module: str, args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        original(self, argv, namespace)  # exits 2 on a bad argument
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    code = 1
    try:
        importlib.import_module(module).main(args)
        message = "the benchmark ran without parsing its arguments"
    except _Parsed:
        code, message = 0, ""
    except SystemExit as e:
        code, message = (e.code if isinstance(e.code, int) else 1), ""
    out, err = capsys.readouterr()
    return code, message + (out + err)[-3000:]


# The same command shown in several places runs once; each place still gets its own test.
_RESULTS: dict[tuple[str, tuple[str, ...]], str | None] = {}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.id)
def test_doc_command(command: Command, request, monkeypatch, capsys):
    key = (command.module, command.args)
    if key not in _RESULTS:
        docs_dir = request.getfixturevalue("docs_dir")
        try:
            check_command(command, docs_dir, monkeypatch, capsys)
            _RESULTS[key] = None
        except AssertionError as e:
            _RESULTS[key] = str(e)
    if _RESULTS[key] is not None:
        pytest.fail(_RESULTS[key], pytrace=False)


def check_command(command: Command, docs_dir: Path, monkeypatch, capsys) -> None:
    where = f"{command.id}: python -m {command.module} {shlex.join(command.args)}"
    args = list(command.args)
    if command.module != "lit_gpt_scratch":
        code, output = parse_bench(command.module, args, monkeypatch, capsys)
        assert code == 0, f"{where}\n{output}"
        return
    if args and args[0] == "lm_eval":
        check_harness_command(args[1:], where, monkeypatch)
        return
    if not args or "--help" in args or "-h" in args:
        code, output = run_cli(args or ["--help"], capsys)
        assert code == 0, f"{where}\n{output}"
        return
    code, output = run_cli([*args, "--print_config"], capsys)
    assert code == 0, f"{where}\n--print_config exits {code}:\n{output}"
    if args[0] in RUN_FOR_REAL:
        corpus = f"[{docs_dir}]"
        if "format: chat" in output:  # conversations, not text
            corpus = f"[{docs_dir.parent / 'doc-chats.jsonl'}]"
        extra = (
            ["--data.sources", corpus, "--data.prepare_workers=0", "--progress=false"]
            if args[0] == "prepare"
            else ["--sources", corpus, "--out", str(docs_dir.parent / "doc-tok.tiktoken")]
        )
        code, output = run_cli([*args, *extra], capsys)
        ran = f"run on a small corpus ({shlex.join(extra)})"
        assert code == 0, f"{where}\n{ran}, exits {code}:\n{output}"


def check_harness_command(args: list[str], where: str, monkeypatch) -> None:
    """``lm_eval ARGS``: lm-evaluation-harness's own parser reads them (nothing runs), and the
    model they name is this project's, registered."""
    pytest.importorskip("lm_eval")
    from lm_eval._cli import HarnessCLI
    from lm_eval.api.registry import get_model

    from lit_gpt_scratch.evaluate.lm_eval_model import LitGPTScratchLM

    monkeypatch.setattr("sys.argv", ["lm_eval", *args])
    try:
        parsed = HarnessCLI().parse_args()
    except SystemExit as e:
        raise AssertionError(f"{where}\nlm-eval's parser exits {e.code}") from None
    assert get_model(parsed.model) is LitGPTScratchLM, f"{where}\nmodel {parsed.model!r}"


# --- links ----------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fence = None
    for line in doc.read_text(encoding="utf-8").split("\n"):
        stripped = line.strip()
        if re.match(r"^(```|~~~)", stripped):
            fence = None if fence and stripped.startswith(fence) else (fence or stripped[:3])
            continue
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if fence is None and m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


@dataclass(frozen=True)
class Link:
    doc: Path
    line: int
    target: str

    @property
    def id(self) -> str:
        return f"{rel(self.doc)}:{self.line}:{self.target}"


def all_links() -> list[Link]:
    out = []
    for doc in DOCS:
        _, prose = code_and_prose(doc, runnable_only=False)
        for paragraph in prose:
            text = re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), paragraph.text)
            for m in re.finditer(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
                target = m.group(1)
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                    continue
                line = paragraph.line + text.count("\n", 0, m.start())
                out.append(Link(doc, line, target))
    return out


LINKS = all_links()


def test_the_docs_have_links():
    assert len(LINKS) >= 30


@pytest.mark.parametrize("link", LINKS, ids=lambda link: link.id)
def test_doc_link(link: Link):
    path, _, anchor = link.target.partition("#")
    target = (link.doc.parent / path).resolve() if path else link.doc
    where = f"{link.id}: [..]({link.target})"
    if not target.exists():
        pytest.fail(f"{where}: {path} does not exist")
    if anchor:
        assert target.suffix == ".md", f"{where}: an anchor into a file that is not markdown"
        assert anchor in anchors(target), f"{where}: {rel(target)} has no heading #{anchor}"


# --- the layout page ------------------------------------------------------------------------


def layout_modules() -> set[str]:
    """The package paths docs/reference/layout.md lists, from its indented tree."""
    text = (ROOT / "docs/reference/layout.md").read_text(encoding="utf-8")
    [tree] = re.findall(r"```\n(lit_gpt_scratch/\n.*?)```", text, re.S)
    stack: list[tuple[int, str]] = []
    listed = set()
    for line in tree.split("\n"):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        name = line.split()[0]
        if not (name.endswith("/") or name.endswith(".py")):
            continue  # a description's second line
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if indent and not stack:
            continue  # below a top-level folder other than the package
        path = "".join(p for _, p in stack) + name
        if not path.startswith("lit_gpt_scratch/"):
            break  # configs/, docs/, tests/: past the package
        listed.add(path.rstrip("/"))
        if name.endswith("/"):
            stack.append((indent, name))
    return listed


def test_layout_page_lists_the_package():
    listed = layout_modules()
    package = ROOT / "lit_gpt_scratch"
    modules = {
        rel(p)
        for p in package.rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    }
    folders = {rel(p) for p in package.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    missing = sorted(m for m in listed if not (ROOT / m).exists())
    unlisted = sorted(modules - listed)
    assert not missing, f"docs/reference/layout.md lists what the package lacks: {missing}"
    assert not unlisted, f"docs/reference/layout.md leaves out: {unlisted}"
    assert folders - {"lit_gpt_scratch"} <= listed, sorted(folders - listed)


def test_layout_parser_reads_the_tree():
    listed = layout_modules()
    assert "lit_gpt_scratch/cli/main.py" in listed
    assert "lit_gpt_scratch/errors.py" in listed
