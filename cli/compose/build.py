"""`build:` sections, through the same client code as `berth build` (cli/commands/build.py):
its context streaming (the builder applies .dockerignore) and its progress output."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from cli.client import CliError
from cli.compose.errors import ComposeError


def build_image(client: Any, conf: dict, tag: str, no_cache: bool = False, pull: bool = False,
                service: str = "") -> str:
    """Build one service's image, tagged `tag`; returns the image id."""
    from cli.commands.build import Progress, stream_build

    root = Path(conf["context"])
    if not root.is_dir():
        raise ComposeError(f'service "{service}": build context {root} is not a directory')
    dockerfile, content = conf.get("dockerfile", "Dockerfile"), ""
    path = Path(dockerfile) if os.path.isabs(dockerfile) else root / dockerfile
    try:
        dockerfile = str(path.resolve().relative_to(root.resolve()))
    except ValueError:  # outside the context: sent as text, as `berth build -f` does
        try:
            content = path.read_text()
        except OSError as err:
            raise ComposeError(f'service "{service}": cannot read Dockerfile {path}: {err.strerror}') from None
        dockerfile = path.name
    if not content and not path.is_file():
        raise ComposeError(f'service "{service}": Dockerfile not found: {path}')
    options = client.image.BuildOptions(
        dockerfile=dockerfile, dockerfile_content=content, tags=[tag], build_args=conf.get("args", {}),
        target=conf.get("target", ""), labels=conf.get("labels", {}), no_cache=no_cache or conf.get("no_cache", False),
        pull=pull)
    shown = Progress("tty" if sys.stderr.isatty() else "plain", quiet=False)
    try:
        image = stream_build(client, options, root, shown)
    except CliError as err:
        why = str(err).removeprefix("Error response from daemon: ")
        raise ComposeError(f'service "{service}": build failed: {why}') from None
    if image is None:
        raise ComposeError(f'service "{service}": the build ended without an image')
    return image.id
