"""YAML as the Compose spec reads it: YAML 1.2 scalars on top of PyYAML's 1.1 loader.

PyYAML follows YAML 1.1, where `no`/`on` are booleans and `22:22` is a base-60 integer;
that silently breaks `restart: no` and `ports: [22:22]`. Compose implementations follow 1.2,
so this loader only knows true/false as booleans and plain decimal/hex/octal integers.
Duplicate keys are an error, as in compose.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from cli.compose.errors import ComposeError


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema booleans and integers."""


_REPLACED = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int")
ComposeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ComposeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))
ComposeLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                    list("-+0123456789"))


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    return int(text, 0) if text.startswith("0x") else int(text)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)  # `<<` merge keys
    out: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise ComposeError(f"line {key_node.start_mark.line + 1}: mapping key {key!r} already defined")
        out[key] = loader.construct_object(value_node, deep=True)
    return out


ComposeLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
ComposeLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def load_yaml(text: str, name: str) -> Any:
    """Parse one compose file; a syntax error is one line naming the file, line and column."""
    try:
        return yaml.load(text, Loader=ComposeLoader)  # noqa: S506 - a SafeLoader subclass
    except ComposeError as err:
        raise ComposeError(f"{name}: {err}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ComposeError(f"{name}: yaml: {where}{err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ComposeError(f"{name}: yaml: {err}") from None


def dump_yaml(value: Any) -> str:
    """Block-style YAML for `config`, keys in a stable order."""
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True)


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as err:
        raise ComposeError(f"open {path}: {err.strerror.lower() if err.strerror else err}") from None
    return load_yaml(text, str(path))
