"""`berth cp`: files between the host and a container, as tar streams over the API.

Docker's forms: ``cp SRC CONTAINER:DEST``, ``cp CONTAINER:SRC DEST``, with ``-`` for a
tar stream on stdin/stdout. A destination that is a directory receives the item; one
that does not exist becomes its new name. Modes, owners (numeric) and symlinks are
kept. Extraction on the host refuses absolute names and anything (names or links)
that would land outside the destination: a container cannot write elsewhere on the host.
"""

from __future__ import annotations

import os
import posixpath
import sys
import tarfile
import tempfile

import typer

from cli.client import CHUNK, Client, CliError
from cli.commands import add
from services.common import tarsafe


def split_arg(arg: str) -> tuple[str | None, str]:
    """('box', '/etc') for 'box:/etc'; (None, path) for a local path ('./a:b' stays local)."""
    if arg.startswith(("/", ".")) or arg == "-":
        return None, arg
    container, sep, path = arg.partition(":")
    if sep and container:
        return container, path
    return None, arg


def _rename(tar: tarfile.TarFile, new_top: str | None):  # noqa: ANN202
    contents = None
    for member in tar:
        if new_top:
            name = (member.name[2:] if member.name.startswith("./") else member.name).rstrip("/")
            if contents is None:
                contents = name in ("", ".")
            if name in ("", "."):
                member.name = new_top
            elif contents:
                member.name = f"{new_top}/{name}"
            else:
                _, _, rest = name.partition("/")
                member.name = new_top + ("/" + rest if rest else "")
        yield member


def _local_target(dest: str) -> tuple[str, str | None]:
    if os.path.isdir(dest):
        return dest, None
    if dest.endswith("/"):
        raise CliError(f"berth: destination directory {dest} does not exist", 1)
    parent = os.path.dirname(dest.rstrip("/")) or "."
    if not os.path.isdir(parent):
        raise CliError(f"berth: no such directory: {parent}", 1)
    return parent, os.path.basename(dest.rstrip("/"))


def _from_container(client: Client, container: str, path: str, dest: str) -> None:
    chunks = client.stream(client.stub.CopyFromContainer(client.runtime.CopyFromRequest(id=container, path=path)))
    if dest == "-":
        out = sys.stdout.buffer
        for chunk in chunks:
            out.write(chunk.data)
        out.flush()
        return
    directory, new_top = _local_target(dest)
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spool:
        for chunk in chunks:
            spool.write(chunk.data)
        spool.seek(0)
        try:
            with tarfile.open(fileobj=spool, mode="r:") as tar:
                for member in _rename(tar, new_top):
                    tarsafe.extract(tar, member, directory)
        except (tarfile.TarError, OSError) as err:
            raise CliError(f"berth: copy failed: {err}", 1) from None


def _to_container(client: Client, src: str, container: str, path: str) -> None:
    if src == "-":
        data = iter(lambda: sys.stdin.buffer.read(CHUNK), b"")
    else:
        if not os.path.lexists(src):
            raise CliError(f"berth: lstat {os.path.abspath(src)}: no such file or directory", 1)
        contents = src.endswith("/.")
        arcname = "." if contents else os.path.basename(src.rstrip("/")) or "."
        spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115 - closed by the generator
        with tarfile.open(fileobj=spool, mode="w:", format=tarfile.PAX_FORMAT) as tar:
            tar.add(src, arcname=arcname, recursive=True)
        spool.seek(0)

        def read_spool():  # noqa: ANN202
            with spool:
                while chunk := spool.read(CHUNK):
                    yield chunk

        data = read_spool()
    rt = client.runtime

    def requests():  # noqa: ANN202
        yield rt.CopyToRequest(header=rt.CopyToHeader(id=container, path=path))
        for chunk in data:
            yield rt.CopyToRequest(data=chunk)

    client.call("CopyToContainer", requests())


def cp(src: str = typer.Argument(..., help="SRC_PATH or CONTAINER:SRC_PATH"),
       dest: str = typer.Argument(..., help="DEST_PATH or CONTAINER:DEST_PATH")) -> None:
    """Copy files/folders between a container and the local filesystem."""
    src_container, src_path = split_arg(src)
    dest_container, dest_path = split_arg(dest)
    if src_container and dest_container:
        raise CliError("berth: copying between containers is not supported", 1)
    if not src_container and not dest_container:
        raise CliError("berth: must specify at least one container source", 1)
    client = Client()
    if src_container:
        _from_container(client, src_container, posixpath.normpath(src_path) + ("/." if src_path.endswith("/.")
                                                                              else ""), dest_path)
    else:
        _to_container(client, src_path, dest_container, dest_path)


def register(app: typer.Typer, only: str | None = None) -> None:
    add(app, only, "cp", cp)
