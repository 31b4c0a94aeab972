"""The command line: ``python -m lit_gpt_scratch <subcommand> [options]``.

Every subcommand reads the same YAML configs (``--config``, repeatable and layered) and takes
dotted overrides (``--data.tokenizer=gpt2``). Each subcommand is one entry of ``SUBCOMMANDS``:
a one-line summary and a function that takes the remaining arguments and returns an exit code.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lit_gpt_scratch.errors import Interrupted, StoppedNow, Terminated, UserError, one_line

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser

# OSErrors of the machine, not of the code: no space, no permission, a read-only filesystem.
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def prepare_parser() -> ArgumentParser:
    from jsonargparse import ActionConfigFile, ArgumentParser

    from lit_gpt_scratch.cli.lightning_cli import training_config_keys
    from lit_gpt_scratch.data.datamodule import TokenDataModule

    parser = ArgumentParser(
        prog="lit-gpt-scratch prepare",
        exit_on_error=False,
        allow_abbrev=False,
        description="Tokenize data.sources into memory-mappable shards and meta.json in "
        "data.data_dir. Reads the data: section of a training config; other sections are ignored.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config; may be repeated")
    # The data: section is TokenDataModule's (prepare's options plus the loader's), so a
    # training config reads as is; prepare uses its own options and ignores the rest.
    parser.add_class_arguments(TokenDataModule, "data")
    parser.add_argument("--progress", type=bool, default=True, help="Show a progress bar")
    # Every other top-level key of a training config, accepted and ignored: read off fit's own
    # parser, so that a key fit gains (its own or Lightning's) is never refused here.
    own = set(parser.get_defaults().as_dict())
    for key in training_config_keys():
        if key not in own:
            parser.add_argument(f"--{key}", type=Any, default=None, help=argparse.SUPPRESS)
    return parser


def parse(parser, args: list[str]):
    """Parse, turning a config error (unknown key, bad value) into a one-line UserError."""
    try:
        return parser.parse_args(args)
    except argparse.ArgumentError as e:
        raise UserError(f"{one_line(e)} (see --help)") from None


def run_prepare(args: list[str]) -> int:
    from lit_gpt_scratch.cli.lightning_cli import configured_head, configured_objective
    from lit_gpt_scratch.data.prepare import prepare_from_config

    if configured_head(args) is not None:
        raise UserError(
            "model.head classification: its data.train_file and data.val_file are read as fit "
            "starts, there is nothing to prepare"
        )
    if configured_objective(args) is not None:
        raise UserError(
            "model.objective dpo: its data.train_file and data.val_file are read as fit "
            "starts, there is nothing to prepare"
        )

    cfg = parse(prepare_parser(), args)
    prepare_from_config(cfg.data.as_dict(), progress=cfg.progress)
    return 0


def run_show_batch(args: list[str]) -> int:
    from lit_gpt_scratch.cli.show_batch import add_options, show, trainer_overrides

    # A training config's data: section, the other sections accepted, as prepare reads them
    parser = prepare_parser()
    parser.prog = "lit-gpt-scratch show_batch"
    parser.description = (
        "Print the exact windows that optimizer step --step of this config's run trained on, "
        "decoded (the train sampler is a seeded permutation: nothing is trained)."
    )
    add_options(parser)
    overrides, args = trainer_overrides(args)
    cfg = parse(parser, args)
    trainer = {**(cfg.trainer if isinstance(cfg.trainer, dict) else {}), **overrides}
    show(cfg, trainer, cfg.step, cfg.rank, cfg.micro_batch, cfg.world_size)
    return 0


def function_command(
    name: str, module: str = "lit_gpt_scratch.cli.commands"
) -> Callable[[list[str]], int]:
    """A subcommand whose options are the signature of the function ``name`` in ``module``."""

    def run(args: list[str]) -> int:
        import importlib

        from jsonargparse import ActionConfigFile, ArgumentParser

        function = getattr(importlib.import_module(module), name)
        parser = ArgumentParser(
            prog=f"lit-gpt-scratch {name}",
            exit_on_error=False,
            allow_abbrev=False,
            description=" ".join(function.__doc__.split("\n\n")[0].split()),
        )
        parser.add_argument(
            "--config", action=ActionConfigFile, help="YAML config; may be repeated"
        )
        parser.add_function_arguments(function)
        cfg = parse(parser, args).as_dict()
        cfg.pop("config", None)
        function(**cfg)
        return 0

    return run


def run_lm_eval(args: list[str]) -> int:
    try:
        from lit_gpt_scratch.evaluate.lm_eval_model import run_harness
    except ImportError as e:
        raise UserError(
            f"lm_eval needs lm-evaluation-harness ({one_line(e)}): "
            "pip install 'lit-gpt-scratch[eval]'"
        ) from None
    return run_harness(args)


def lightning_command(name: str) -> Callable[[list[str]], int]:
    """A LightningCLI subcommand (fit, validate, test, predict)."""

    def run(args: list[str]) -> int:
        from lit_gpt_scratch.cli import lightning_cli

        return lightning_cli.run([name, *args])

    return run


SUBCOMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "fit": ("train a model (LightningCLI; --config configs/tiny.yaml)", lightning_command("fit")),
    "validate": ("evaluate a checkpoint on the val split", lightning_command("validate")),
    "test": ("evaluate a checkpoint on the test (= val) split", lightning_command("test")),
    "predict": ("per-window loss of the val split", lightning_command("predict")),
    "prepare": ("tokenize a corpus into token shards (reads the data: section)", run_prepare),
    "show_batch": (
        "decode the windows a step of a run trained on (reads the data: section)",
        run_show_batch,
    ),
    "train_tokenizer": (
        "fit a BPE vocabulary to a corpus (writes a .tiktoken file)",
        function_command("train_tokenizer", "lit_gpt_scratch.tokenizer.training"),
    ),
    "generate": ("sample text from a checkpoint", function_command("generate")),
    "classification_set": (
        "write a labelled .jsonl set from the stdlib (for configs/classify-tiny.yaml)",
        function_command("classification_set", "lit_gpt_scratch.data.classification_set"),
    ),
    "preference_set": (
        "write a {prompt, chosen, rejected} .jsonl set from the stdlib (for configs/dpo-tiny.yaml)",
        function_command("preference_set", "lit_gpt_scratch.data.preference_set"),
    ),
    "chat": (
        "talk with a chat fine-tuned checkpoint (/reset, /quit; reads a pipe too)",
        function_command("chat", "lit_gpt_scratch.cli.chat"),
    ),
    "serve": (
        "serve a checkpoint over HTTP: OpenAI-compatible API and a chat page (serve extra)",
        function_command("serve", "lit_gpt_scratch.cli.serve"),
    ),
    "evaluate": (
        "score a checkpoint on downstream tasks (acc, acc_norm) and text (bpb)",
        function_command("evaluate", "lit_gpt_scratch.cli.evaluate"),
    ),
    "lm_eval": (
        "lm-evaluation-harness's command line, with --model lit_gpt_scratch (eval extra)",
        run_lm_eval,
    ),
    "import_hf": (
        "convert a local Hugging Face GPT-2/Llama directory",
        function_command("import_hf"),
    ),
    "export": ("write a checkpoint as a Hugging Face directory", function_command("export")),
    "export_gguf": (
        "write a checkpoint as one GGUF file for llama.cpp and Ollama",
        function_command("export_gguf"),
    ),
    "consolidate": (
        "gather a sharded (FSDP) checkpoint into one file",
        function_command("consolidate"),
    ),
}


def usage() -> str:
    lines = ["usage: python -m lit_gpt_scratch <subcommand> [--config FILE] [--key=value ...]", ""]
    lines += [f"  {name:<16} {summary}" for name, (summary, _) in SUBCOMMANDS.items()]
    lines += ["", "Run a subcommand with --help for its options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; bad input becomes one ``error:`` line and a non-zero exit."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        from lit_gpt_scratch.cli.strict_yaml import check_config_files, use_strict_yaml

        use_strict_yaml()
        check_config_files(rest)
        return SUBCOMMANDS[name][1](rest)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        # A full disk or a read-only directory: the user's to fix, and nothing half-written
        # stays behind (checkpoints and shards are written to temporary names, then renamed).
        print(f"error: {e.filename or 'a file'}: {e.strerror}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted):
        print("interrupted: run the same command again to continue", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated: run the same command again to continue", file=sys.stderr)
        return 143
    except StoppedNow:
        print(
            "error: stopped at once by a second Ctrl-C, without saving this step: "
            "--ckpt_path last resumes from the last checkpoint saved",
            file=sys.stderr,
        )
        return 130
    except RuntimeError as e:
        if not peer_stopped(e):
            raise
        # Another rank stopped (its own error line is above): say so, not a gloo traceback.
        print("error: another process of this run stopped: see its error above", file=sys.stderr)
        return 1


# How gloo and NCCL report a peer process that exited while this one waited on it.
PEER_STOPPED = ("Connection closed by peer", "Connection reset by peer", "NCCL communicator")


def peer_stopped(error: RuntimeError) -> bool:
    return type(error).__name__ == "DistBackendError" or any(
        phrase in str(error) for phrase in PEER_STOPPED
    )


def exit_with(code: int) -> None:
    """End the process with a command's exit code, which a late signal (a second SIGTERM
    from a scheduler) cannot replace while the interpreter shuts down."""
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(signum, _say_ignored_while_exiting)
    sys.exit(code)


def _say_ignored_while_exiting(signum, frame) -> None:
    # os.write, not logging: the interpreter may be shutting logging down
    os.write(2, f"{signal.Signals(signum).name} received: ignored, exiting\n".encode())


def entry() -> None:
    """Console script ``lit-gpt-scratch``."""
    exit_with(main())
