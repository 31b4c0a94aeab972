"""YAML configs where a key written twice in one mapping is an error, not a silent override.

PyYAML, and so jsonargparse, keeps the later of two equal keys without a word: a config that
sets ``lr`` twice trains with the second value, whichever one its reader looked at.
``use_strict_yaml()`` makes every config this project parses (files and ``--key=value``
values alike) refuse it, naming the key and both lines.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from jsonargparse import set_loader
from jsonargparse._loaders_dumpers import get_yaml_default_loader, yaml_load

from lit_gpt_scratch.errors import UserError


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, first: int, second: int, path: str | None = None):
        self.key, self.first, self.second, self.path = key, first, second, path
        where = f"{path}: " if path else ""
        super().__init__(
            f"{where}key {key!r} is set twice, on lines {first} and {second}: keep one"
        )


class _NoDuplicateKeys(get_yaml_default_loader()):
    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                key, line = key_node.value, key_node.start_mark.line + 1
                if key in first_line:
                    raise DuplicateKey(key, first_line[key], line)
                first_line[key] = line
        return super().construct_mapping(node, deep)


def strict_yaml_load(stream, path=None):
    """jsonargparse's YAML loader, after a check that no mapping repeats a key (``path``:
    the config file it came from, which jsonargparse passes for files)."""
    if isinstance(stream, str) and stream.strip():
        try:
            yaml.load(stream, Loader=_NoDuplicateKeys)
        except DuplicateKey as e:
            raise DuplicateKey(e.key, e.first, e.second, path and str(path)) from None
    return yaml_load(stream)


def use_strict_yaml() -> None:
    set_loader("yaml", strict_yaml_load, exceptions=(yaml.YAMLError,))


def config_files(args: list[str]) -> list[str]:
    """The paths given as ``--config PATH`` or ``--config=PATH``, in order."""
    paths = []
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            paths.append(args[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.removeprefix("--config="))
    return paths


def check_config_files(args: list[str]) -> None:
    """Each ``--config`` file is UTF-8 text holding a mapping of sections, or one line says
    which is not (jsonargparse ends the first in a UnicodeDecodeError traceback and reports
    the second as "Unexpected config", naming neither the file nor the problem)."""
    for path in config_files(args):
        if not os.path.isfile(path):
            continue  # jsonargparse names a missing one
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"config {path} is not UTF-8 text (byte {e.start}: {e.reason}): save it as UTF-8"
            ) from None
        try:
            document = yaml.load(text, Loader=_NoDuplicateKeys)
        except DuplicateKey:
            continue  # strict_yaml_load names it with the file
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"config {path} is not valid YAML: {problem}{where}") from None
        if document is None:
            raise UserError(f"config {path} is empty: give it sections such as trainer: or data:")
        if not isinstance(document, dict):
            raise UserError(
                f"config {path} holds a {type(document).__name__}, not a mapping of sections "
                "(trainer:, model:, data: ...)"
            )
