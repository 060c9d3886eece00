"""`berth build`: stream a context directory to the builder and show its progress.

The context goes out as a tar stream, made while it is sent (a context of many
files is never held in memory), with owners reset to root as Docker's client
does. `.dockerignore` is applied by the builder, which reads it from the
context like every other file. The Dockerfile travels inside the context, or
as text when `-f` points outside it.
"""

from __future__ import annotations

import os
import queue
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import typer

from cli import output
from cli.client import Client, CliError, pairs
from cli.commands import add

CHUNK = 1 << 20


class _QueueWriter:
    """File-like: tarfile writes here, the gRPC request stream reads chunks from the queue."""

    def __init__(self, q: queue.Queue) -> None:
        self.q = q
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        if len(self.buf) >= CHUNK:
            self.q.put(bytes(self.buf))
            self.buf.clear()
        return len(data)

    def flush(self) -> None:
        if self.buf:
            self.q.put(bytes(self.buf))
            self.buf.clear()


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def context_chunks(root: Path, first: tuple[str, ...] = ()) -> Iterator[bytes]:
    """The context directory as tar chunks, produced by a thread as they are consumed.

    `first` (the Dockerfile and .dockerignore) go ahead of everything else, so the
    builder knows what to ignore before the ignored files arrive."""
    q: queue.Queue = queue.Queue(maxsize=8)
    failure: list[BaseException] = []
    done = object()

    def produce() -> None:
        writer = _QueueWriter(q)
        try:
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                ahead = [name for name in first if (root / name).is_file()]
                for name in ahead:
                    tar.add(root / name, arcname=name, filter=_root_owned)

                def skip_ahead(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
                    return None if info.name in ahead else _root_owned(info)

                for entry in sorted(os.listdir(root)):
                    tar.add(root / entry, arcname=entry, filter=skip_ahead)
            writer.flush()
        except BaseException as exc:  # noqa: BLE001 - reported by the consumer
            failure.append(exc)
        finally:
            q.put(done)

    threading.Thread(target=produce, name="context", daemon=True).start()
    while (item := q.get()) is not done:
        yield item
    if failure:
        raise CliError(f"berth: cannot read the build context: {failure[0]}", 1)


def _requests(client: Client, options, root: Path) -> Iterator:  # noqa: ANN001
    pb = client.image
    yield pb.BuildInput(options=options)
    for chunk in context_chunks(root, (options.dockerfile, ".dockerignore")):
        yield pb.BuildInput(context=chunk)
    yield pb.BuildInput(context_end=True)


class Progress:
    """Docker-like build output: `plain` (BuildKit's step-numbered lines) or `tty`
    (the classic builder's "Step N/M :" shape), or nothing but the id with -q."""

    def __init__(self, mode: str, quiet: bool) -> None:
        self.mode = mode
        self.quiet = quiet
        self.started = time.monotonic()
        self.current = 0
        self.output_tail: list[str] = []  # a failing step's output, shown even with -q

    def _out(self, text: str) -> None:
        if not self.quiet:
            sys.stderr.write(text)
            sys.stderr.flush()

    def step(self, step) -> None:  # noqa: ANN001
        self.current = step.number
        self.output_tail.clear()
        if self.mode == "plain":
            if not step.done:
                where = f"{step.number}/{step.total}" if step.stage.isdigit() else \
                    f"{step.stage} {step.number}/{step.total}"
                self._out(f"#{step.number} [{where}] {step.instruction}\n")
            elif step.cached:
                self._out(f"#{step.number} CACHED\n")
            else:
                self._out(f"#{step.number} DONE {step.duration_ns / 1e9:.1f}s\n")
        elif not step.done:
            self._out(f"Step {step.number}/{step.total} : {step.instruction}\n")
        elif step.cached:
            self._out(" ---> Using cache\n")

    def text(self, data: bytes) -> None:
        text = data.decode(errors="replace")
        self.output_tail = (self.output_tail + text.splitlines())[-20:]
        if self.mode == "plain":
            elapsed = time.monotonic() - self.started
            for line in text.splitlines():
                self._out(f"#{self.current} {elapsed:.3f} {line}\n")
        else:
            self._out(text if text.endswith("\n") else text + "\n")

    def status(self, line: str) -> None:
        self._out(f"#{self.current} {line}\n" if self.mode == "plain" else f"{line}\n")


def build(path: str = typer.Argument(..., metavar="PATH", help="The build context directory"),
          tag: list[str] = typer.Option([], "-t", "--tag", help="Name and optionally a tag (name:tag)"),
          file: str = typer.Option("", "-f", "--file", help="Name of the Dockerfile (default: PATH/Dockerfile)"),
          build_arg: list[str] = typer.Option([], "--build-arg", help="Set build-time variables"),
          target: str = typer.Option("", "--target", help="Set the target build stage to build"),
          no_cache: bool = typer.Option(False, "--no-cache", help="Do not use cache when building the image"),
          pull: bool = typer.Option(False, "--pull", help="Always attempt to pull a newer version of the image"),
          platform: str = typer.Option("", "--platform", help="Set platform if server is multi-platform capable"),
          label: list[str] = typer.Option([], "--label", help="Set metadata for an image"),
          network: str = typer.Option("", "--network", help="Networking mode for the RUN instructions"),
          progress: str = typer.Option("auto", "--progress", help="Type of progress output: auto, plain, tty"),
          quiet: bool = typer.Option(False, "-q", "--quiet", help="Suppress the build output and print image ID"),
          ) -> None:
    """Build an image from a Dockerfile."""
    if progress not in ("auto", "plain", "tty"):
        raise CliError(f'berth: invalid --progress value "{progress}": expected auto, plain or tty', 125)
    root = Path(path)
    if not root.is_dir():
        raise CliError(f'berth: unable to prepare context: path "{path}" not found', 1)
    client = Client()
    dockerfile, content = "Dockerfile", ""
    if file:
        fpath = Path(file)
        try:
            dockerfile = str(fpath.resolve().relative_to(root.resolve()))
        except ValueError:
            try:
                content = fpath.read_text()
            except OSError as err:
                raise CliError(f"berth: cannot read Dockerfile {file}: {err.strerror}", 1) from None
            dockerfile = fpath.name
    elif not (root / "Dockerfile").is_file():
        raise CliError(f"berth: unable to prepare context: Dockerfile not found in {path}", 1)
    args = {}
    for item in build_arg:
        key, sep, value = item.partition("=")
        if not sep:
            if key not in os.environ:
                continue  # Docker: a bare name takes the environment's value, if any
            value = os.environ[key]
        args[key] = value
    options = client.image.BuildOptions(
        dockerfile=dockerfile, dockerfile_content=content, tags=tag, build_args=args, target=target,
        no_cache=no_cache, pull=pull, platform=platform, labels=pairs(label), network=network)
    mode = progress if progress != "auto" else ("tty" if sys.stderr.isatty() else "plain")
    shown = Progress(mode, quiet)
    image = None
    try:
        for ev in client.stream(client.stub.Build(_requests(client, options, root))):
            kind = ev.WhichOneof("item")
            if kind == "step":
                shown.step(ev.step)
            elif kind == "output":
                shown.text(ev.output.data)
            elif kind == "status":
                shown.status(ev.status)
            elif kind == "image":
                image = ev.image
    except CliError as err:
        if quiet and shown.output_tail:
            sys.stderr.write("\n".join(shown.output_tail) + "\n")
        raise CliError(str(err).replace("Error response from daemon: ", "ERROR: "), 1) from None
    if image is None:
        raise CliError("berth: the build ended without an image", 1)
    if quiet:
        print(image.id)
        return
    if mode == "plain":
        shown._out(f"writing image {image.id} done\n")
        for t in image.repo_tags:
            shown._out(f"naming to {t} done\n")
    else:
        shown._out(f"Successfully built {output.short_id(image.id)}\n")
        for t in image.repo_tags:
            shown._out(f"Successfully tagged {t}\n")


def register(app: typer.Typer, only: str | None = None) -> None:
    add(app, only, "build", build)
