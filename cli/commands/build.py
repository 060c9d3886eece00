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
import stat
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

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
    info.mtime = int(info.mtime)  # whole seconds: a fractional mtime costs a PAX header per file
    return info


class _Walker:
    """Adds a tree to a tar the way `TarFile.add` does (sorted, depth first), without its
    per-file user and group name lookups, which dominate a context of many small files (owners
    are root's anyway). Hard-linked files go as regular files: the builder may drop the first
    name by .dockerignore, and a link to it would then point at nothing."""

    def __init__(self, tar: tarfile.TarFile, skip: set[str]) -> None:
        self.tar = tar
        self.skip = skip

    def add(self, path: str, arcname: str) -> None:
        if arcname in self.skip:
            return
        st = os.lstat(path)
        mode = st.st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            info = self.tar.gettarinfo(path, arcname)  # devices, fifos: rare, tarfile knows them
            if info is not None:
                self.tar.addfile(_root_owned(info))
            return
        info = tarfile.TarInfo(arcname)
        info.mode, info.mtime = stat.S_IMODE(mode), int(st.st_mtime)
        if stat.S_ISREG(mode):
            info.size = st.st_size
            with open(path, "rb") as f:
                self.tar.addfile(info, f)
        elif stat.S_ISLNK(mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
            self.tar.addfile(info)
        else:
            info.type = tarfile.DIRTYPE
            self.tar.addfile(info)
            for name in sorted(os.listdir(path)):
                self.add(os.path.join(path, name), f"{arcname}/{name}")


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
                walker = _Walker(tar, set(ahead))
                for entry in sorted(os.listdir(root)):
                    walker.add(str(root / entry), entry)
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
    """Docker-like build output: `plain` (BuildKit's step-numbered lines), or nothing but
    the id with -q. `tty` is LiveProgress."""

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


class LiveProgress:
    """`--progress tty`: BuildKit's compact terminal view, drawn with rich.

    A finished step becomes one permanent line (`=> [2/5] RUN make  3.1s`, or
    `=> CACHED [3/5] COPY ...`); the step running now is drawn live below them,
    with its elapsed time and the last few lines of its output, which collapse
    when it succeeds. A failing step's output stays on screen.
    """

    TAIL = 6

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console
        from rich.live import Live

        self.quiet = quiet
        self.started = time.monotonic()
        self.console = Console(stderr=True, force_terminal=True, highlight=False)
        self.running: dict[int, tuple[Any, float]] = {}  # number -> (step, start)
        self.tail: list[str] = []
        self.output_tail: list[str] = []  # a failing step's output, shown even with -q
        self.current = 0
        self.total = 0
        self.done = 0
        self.live = Live(console=self.console, auto_refresh=not quiet, refresh_per_second=8, transient=True,
                         get_renderable=self._render)
        if not quiet:
            self.live.start()

    @staticmethod
    def _where(step: Any) -> str:
        return f"{step.number}/{step.total}" if step.stage.isdigit() else f"{step.stage} {step.number}/{step.total}"

    def _line(self, step: Any, seconds: float, cached: bool = False, style: str = "") -> Any:
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(expand=True)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", width=8)
        grid.add_row(Text(("=> CACHED " if cached else "=> ") + f"[{self._where(step)}] {step.instruction}"),
                     Text(f"{seconds:.1f}s"), style=style)  # Text: never read as markup
        return grid

    def _render(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        now = time.monotonic()
        counts = f" ({self.done}/{self.total})" if self.total else ""
        parts: list[Any] = [Text(f"[+] Building {now - self.started:.1f}s{counts}", style="bold blue")]
        for step, start in self.running.values():
            parts.append(self._line(step, now - start, style="blue"))
        parts += [Text(f"=> => # {line}", style="dim", no_wrap=True, overflow="ellipsis")
                  for line in self.tail[-self.TAIL:]]
        return Group(*parts)

    def _print(self, renderable: Any) -> None:
        if not self.quiet:
            self.live.console.print(renderable, soft_wrap=isinstance(renderable, str), markup=False)

    def step(self, step: Any) -> None:
        self.total = step.total
        self.current = step.number
        if not step.done:
            self.running[step.number] = (step, time.monotonic())
            self.tail = []
            self.output_tail.clear()
            return
        self.running.pop(step.number, None)
        self.done += 1
        self._print(self._line(step, step.duration_ns / 1e9, cached=step.cached))
        self.tail = []

    def text(self, data: bytes) -> None:
        lines = data.decode(errors="replace").splitlines()
        self.tail = (self.tail + lines)[-self.TAIL:]
        self.output_tail = (self.output_tail + lines)[-20:]

    def status(self, line: str) -> None:
        self.tail = (self.tail + [line])[-self.TAIL:]

    def fail(self) -> None:
        """The step that failed, with its output, stays on screen."""
        now = time.monotonic()
        for step, start in self.running.values():
            self._print(self._line(step, now - start, style="red"))
        for line in self.output_tail:
            self._print(f"=> => # {line}")
        self.close()

    def close(self) -> None:
        if self.live.is_started:
            self.live.stop()

    def finish(self, image: Any) -> None:
        self.close()
        if self.quiet:
            return
        from rich.text import Text

        self.console.print(Text(f"[+] Building {time.monotonic() - self.started:.1f}s ({self.done}/{self.total}) "
                                "FINISHED", style="bold blue"))
        self.console.print(f"=> => writing image {image.id} done", soft_wrap=True, markup=False)
        for t in image.repo_tags:
            self.console.print(f"=> => naming to {t} done", soft_wrap=True, markup=False)


def stream_build(client: Client, options, root: Path, shown: Progress | LiveProgress):  # noqa: ANN001, ANN201
    """Send options and context, show the events; the built image, or None if none came."""
    image = None
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
    return image


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
    shown: Progress | LiveProgress = LiveProgress(quiet) if mode == "tty" else Progress(mode, quiet)
    try:
        image = stream_build(client, options, root, shown)
    except CliError as err:
        if isinstance(shown, LiveProgress):
            shown.fail()
        if quiet and shown.output_tail:
            sys.stderr.write("\n".join(shown.output_tail) + "\n")
        raise CliError(str(err).replace("Error response from daemon: ", "ERROR: "), 1) from None
    except BaseException:
        if isinstance(shown, LiveProgress):
            shown.close()
        raise
    if isinstance(shown, LiveProgress):
        if image is not None:
            shown.finish(image)
        shown.close()
    if image is None:
        raise CliError("berth: the build ended without an image", 1)
    if quiet:
        print(image.id)
        return
    if mode == "plain":
        shown._out(f"writing image {image.id} done\n")  # type: ignore[union-attr]
        for t in image.repo_tags:
            shown._out(f"naming to {t} done\n")  # type: ignore[union-attr]


def register(app: typer.Typer, only: str | None = None) -> None:
    add(app, only, "build", build)
