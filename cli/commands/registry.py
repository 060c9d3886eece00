"""Registry commands: pull, push, login, logout, save, history, system df.

Credentials follow Docker's client-side model: `login` checks them through the
daemon and stores them in a Docker-compatible `config.json` (`$DOCKER_CONFIG`
or `~/.docker`, mode 0600); `pull`/`push` read the entry for the image's
registry and send it with the request. The daemon never stores them.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from typing import Any

import typer

from cli import output
from cli.auth import (
    DOCKER_HUB,
    DOCKER_HUB_KEY,
    TOKEN_USERNAME,
    _helper_for,
    _helper_server,
    _matches,
    _read_config,
    _run_helper,
    _write_config,
    auth_for,
    registry_of,
    server_key,
)
from cli.client import Client, CliError, ServiceClient
from cli.commands import add, add_group

system_app = typer.Typer(help="Manage Berth", no_args_is_help=True)


# ---- the Images API ------------------------------------------------------------


def images_client() -> ServiceClient:
    """The api's Images service on a fresh connection."""
    from berth.api.v1 import images_pb2_grpc
    from berth.image.v1 import registry_pb2

    return Client().service(images_pb2_grpc.ImagesStub, registry_pb2)


# ---- progress ------------------------------------------------------------------


class PlainProgress:
    """Docker's non-terminal output: one line per layer status change, no byte counts.

    `end` is "\r\n" when the terminal is in raw mode (`run -it`), where a bare
    newline would not return the cursor.
    """

    def __init__(self, file: Any = None, end: str = "\n") -> None:
        self.last: dict[str, str] = {}
        self.file = file
        self.end = end

    def status(self, text: str) -> None:
        print(text, end=self.end, file=self.file or sys.stdout, flush=True)

    def layer(self, layer: Any) -> None:
        if layer.status in ("Downloading", "Pushing", "Extracting"):
            return
        if self.last.get(layer.id) != layer.status:
            self.last[layer.id] = layer.status
            print(f"{layer.id}: {layer.status}", end=self.end, file=self.file or sys.stdout, flush=True)

    def close(self) -> None:
        pass


class RichProgress:
    """Bars per layer on a terminal, with bytes and speed, like `docker pull`."""

    def __init__(self, stderr: bool = False) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.console = Console(stderr=stderr)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=self.console, transient=False)
        self.tasks: dict[str, Any] = {}
        self.progress.start()

    def status(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)

    def layer(self, layer: Any) -> None:
        task = self.tasks.get(layer.id)
        desc = f"{layer.id}: {layer.status}"
        if task is None:
            self.tasks[layer.id] = self.progress.add_task(desc, total=layer.total or None, completed=layer.current)
            return
        done = layer.status in ("Pull complete", "Already exists", "Pushed", "Layer already exists",
                                "Skipped foreign layer") or \
            layer.status.startswith("Mounted from")
        self.progress.update(task, description=desc, completed=layer.total if done else layer.current,
                             total=layer.total or None)

    def close(self) -> None:
        self.progress.stop()


def _progress(quiet: bool) -> Any:
    if quiet:
        return None
    return RichProgress() if sys.stdout.isatty() else PlainProgress()


def _follow(responses: Iterator[Any], quiet: bool) -> Any:
    view = _progress(quiet)
    result = None
    try:
        for msg in responses:
            kind = msg.WhichOneof("item")
            if kind == "result":
                result = msg.result
            elif view is None:
                continue
            elif kind == "status":
                view.status(msg.status)
            elif kind == "layer":
                view.layer(msg.layer)
    finally:
        if view is not None:
            view.close()
    return result


class RunPullView:
    """How `run`/`create` show the pull of a missing image: on stderr, like `docker run`
    ("Unable to find image 'x' locally", then the pull's own lines); bars on a terminal
    unless it is in raw mode for `-it`, plain lines otherwise."""

    def __init__(self, raw_terminal: bool = False) -> None:
        self.raw = raw_terminal
        self.view: Any = None

    def __call__(self, progress: Any) -> None:
        if self.view is None:
            if sys.stderr.isatty() and not self.raw:
                self.view = RichProgress(stderr=True)
            else:
                self.view = PlainProgress(sys.stderr, "\r\n" if self.raw and sys.stderr.isatty() else "\n")
        kind = progress.WhichOneof("item")
        if kind == "status":
            self.view.status(progress.status)
        elif kind == "layer":
            self.view.layer(progress.layer)

    def close(self) -> None:
        if self.view is not None:
            self.view.close()
            self.view = None


def _qualified(ref: str) -> str:
    """Docker prints the fully qualified name at the end of a pull."""
    host = registry_of(ref)
    if host != DOCKER_HUB or ref.startswith(("docker.io/", "index.docker.io/")):
        return ref.replace("index.docker.io/", "docker.io/", 1)
    return f"docker.io/{ref if '/' in ref.split('@')[0].split(':')[0] else 'library/' + ref}"


# ---- commands ------------------------------------------------------------------


def pull(name: str = typer.Argument(..., metavar="NAME[:TAG|@DIGEST]"),
         quiet: bool = typer.Option(False, "-q", "--quiet", help="Suppress verbose output"),
         platform: str = typer.Option("", "--platform", help="Set platform if server is multi-platform capable"),
         ) -> None:
    """Download an image from a registry."""
    api = images_client()
    req = api.pb.PullRequest(reference=name, platform=platform, auth=auth_for(api.client, registry_of(name)))
    result = _follow(api.stream("Pull", req), quiet)
    if result is not None and quiet:
        print(result.digest)  # the contract: `pull -q` prints only the digest
    elif result is not None:
        ref = result.reference
        if "@" not in ref and ":" not in ref.rsplit("/", 1)[-1]:
            ref += ":latest"
        print(_qualified(ref))


def push(name: str = typer.Argument(..., metavar="NAME[:TAG]"),
         all_tags: bool = typer.Option(False, "-a", "--all-tags", help="Push all tags of an image to the repository"),
         quiet: bool = typer.Option(False, "-q", "--quiet", help="Suppress verbose output")) -> None:
    """Upload an image to a registry."""
    api = images_client()
    auth = auth_for(api.client, registry_of(name))
    refs = _all_tags(api.client, name) if all_tags else [name]
    for i, ref in enumerate(refs):
        responses = api.stream("Push", api.pb.PushRequest(reference=ref, auth=auth))
        if i:  # Docker names the repository once for the whole -a push
            responses = (m for m in responses if not (m.WhichOneof("item") == "status"
                                                      and m.status.startswith("The push refers to repository")))
        result = _follow(responses, quiet)
        if quiet and result is not None:
            print(_qualified(result.reference))


def _familiar_repo(repo: str) -> str:
    """`docker.io/library/busybox` and `busybox` alike -> `busybox`."""
    repo = repo.removeprefix("index.docker.io/").removeprefix("docker.io/")
    return repo.removeprefix("library/") if registry_of(repo) == DOCKER_HUB else repo


def _all_tags(client: Client, name: str) -> list[str]:
    """Every local tag of the repository `name` (which must not carry a tag), sorted."""
    last = name.rsplit("/", 1)[-1]
    if "@" in name or ":" in last:
        raise CliError("berth: tag can't be used with --all-tags/-a", 1)
    imgs = client.call("ListImages", client.image.ListImagesRequest(reference=name)).images
    want = _familiar_repo(name)
    tags = sorted({t for img in imgs for t in img.repo_tags if _familiar_repo(t.rsplit(":", 1)[0]) == want})
    if not tags:
        raise CliError(f"berth: An image does not exist locally with the tag: {name}", 1)
    return tags


def login(server: str = typer.Argument("", help="Registry host[:port]; Docker Hub if omitted"),
          username: str = typer.Option("", "-u", "--username", help="Username"),
          password: str = typer.Option("", "-p", "--password", help="Password"),
          password_stdin: bool = typer.Option(False, "--password-stdin", help="Take the password from stdin")) -> None:
    """Log in to a registry."""
    if password and password_stdin:
        raise CliError("berth: --password and --password-stdin are mutually exclusive", 1)
    if password:
        sys.stderr.write("WARNING! Using --password via the CLI is insecure. Use --password-stdin.\n")
    if password_stdin:
        if not username:
            raise CliError("berth: Must provide --username with --password-stdin", 1)
        password = sys.stdin.read().rstrip("\r\n")
    if not username:
        if not sys.stdin.isatty():
            raise CliError("berth: Cannot perform an interactive login from a non TTY device", 1)
        username = input("Username: ").strip()
    if not password:
        import getpass

        if not sys.stdin.isatty():
            raise CliError("berth: Cannot perform an interactive login from a non TTY device", 1)
        password = getpass.getpass("Password: ")
    if not username or not password:
        raise CliError("berth: Error: Non-null Username and Password Required", 1)
    api = images_client()
    auth = api.pb.RegistryAuth(username=username, password=password)
    resp = api.call("Login", api.pb.LoginRequest(server=server, auth=auth))
    doc = _read_config()
    auths = doc.setdefault("auths", {})
    key = server_key(server)
    for old in [k for k in auths if _matches(k, key) and k != key]:
        del auths[old]
    entry: dict[str, str] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    if resp.identity_token:
        entry = {"identitytoken": resp.identity_token}
    helper = _helper_for(doc, key)
    if helper:  # the secret goes to the helper; config.json only records the server, like Docker
        secret_user, secret = (TOKEN_USERNAME, resp.identity_token) if resp.identity_token else (username, password)
        _run_helper(helper, "store", json.dumps({"ServerURL": _helper_server(key), "Username": secret_user,
                                                 "Secret": secret}))
        entry = {}
    auths[key] = entry
    _write_config(doc)
    print(resp.status or "Login Succeeded")


def logout(server: str = typer.Argument("", help="Registry host[:port]; Docker Hub if omitted")) -> None:
    """Log out from a registry."""
    key = server_key(server)
    doc = _read_config()
    auths = doc.get("auths") or {}
    found = [k for k in auths if _matches(k, key)]
    helper = _helper_for(doc, key)
    if helper:
        _run_helper(helper, "erase", _helper_server(key))
    if not found and not helper:
        print(f"Not logged in to {server or DOCKER_HUB_KEY}")
        return
    print(f"Removing login credentials for {key}")
    for k in found:
        del auths[k]
    _write_config(doc)


def save(images_: list[str] = typer.Argument(..., metavar="IMAGE..."),
         out: str = typer.Option("", "-o", "--output", help="Write to a file, instead of STDOUT"),
         format_: str = typer.Option("docker-archive", "--format",
                                     help="docker-archive (default) or oci-archive")) -> None:
    """Save one or more images to a tar archive (streamed to STDOUT by default)."""
    if format_ not in ("docker-archive", "oci-archive"):
        raise CliError(f"berth: invalid --format {format_!r}: expected docker-archive or oci-archive", 125)
    if not out and sys.stdout.isatty():
        raise CliError("berth: cowardly refusing to save to a terminal. Use the -o flag or redirect", 1)
    api = images_client()
    chunks = api.stream("Save", api.pb.SaveRequest(references=images_, format=format_))
    output.write_stream((chunk.data for chunk in chunks), out, "save")


def _ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def history(image: str = typer.Argument(...),
            human: bool = typer.Option(True, "-H", "--human", help="Print sizes and dates in human readable format"),
            no_trunc: bool = typer.Option(False, "--no-trunc", help="Don't truncate output"),
            quiet: bool = typer.Option(False, "-q", "--quiet", help="Only show image IDs")) -> None:
    """Show the history of an image."""
    api = images_client()
    entries = api.call("History", api.pb.HistoryRequest(reference=image)).entries
    if quiet:
        for e in entries:
            print(e.id if no_trunc or e.id == "<missing>" else output.short_id(e.id))
        return
    rows = []
    for e in entries:
        ident = e.id if no_trunc or e.id == "<missing>" else output.short_id(e.id)
        created = output.ago(e.created_unix) if human else output.rfc3339(e.created_unix * 1_000_000_000)
        by = e.created_by.replace("\n", " ") if no_trunc else _ellipsis(e.created_by.replace("\n", " "), 45)
        size = output.human_size(e.size) if human else str(e.size)
        rows.append([ident, created or "N/A", by, size, e.comment])
    output.table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], rows)


def _pct(part: int, whole: int) -> str:
    return f" ({part * 100 // whole}%)" if whole else ""


def system_df(verbose: bool = typer.Option(False, "-v", "--verbose", help="Show detailed information")) -> None:
    """Show Berth disk usage."""
    api = images_client()
    from berth.image.v1 import registry_pb2

    du = api.call("DiskUsage", registry_pb2.DiskUsageRequest())
    rows = []
    for label, row in (("Images", du.images), ("Containers", du.containers), ("Local Volumes", du.volumes),
                       ("Build Cache", du.build_cache)):
        rows.append([label, str(row.total), str(row.active), output.human_size(row.size),
                     output.human_size(row.reclaimable) + _pct(row.reclaimable, row.size)])
    output.table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], rows)
    if verbose:
        print("\nImages space usage:\n")
        img_rows = []
        for u in du.detail.images:
            tags = list(u.image.repo_tags) or ["<none>:<none>"]
            for t in tags:
                repo, _, tag = t.rpartition(":") if ":" in t.rsplit("/", 1)[-1] else (t, "", "<none>")
                img_rows.append([repo, tag, output.short_id(u.image.id), output.ago(u.image.created_unix),
                                 output.human_size(u.image.size), output.human_size(u.shared_size),
                                 output.human_size(u.unique_size), str(u.containers)])
        output.table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE", "UNIQUE SIZE",
                      "CONTAINERS"], img_rows)
        print("\nContainers space usage:\n")
        output.table(["CONTAINER ID", "IMAGE", "SIZE"],
                     [[s.key[:12], output.short_id(s.image_id), output.human_size(s.size)]
                      for s in du.detail.snapshots])


def image_prune(all_: bool = typer.Option(False, "-a", "--all", help="Remove all unused images, not just dangling"),
                force: bool = typer.Option(False, "-f", "--force", help="Do not prompt for confirmation")) -> None:
    """Remove unused images."""
    if not force:
        what = ("all images without at least one container associated to them" if all_
                else "all dangling images")
        sys.stdout.write(f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ")
        sys.stdout.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            return
    api = images_client()
    resp = api.call("Prune", api.pb.PruneRequest(all=all_))
    if resp.untagged or resp.deleted:
        print("Deleted Images:")
        for u in resp.untagged:
            print(f"untagged: {u}")
        for d in resp.deleted:
            print(f"deleted: {d}")
        print()
    print(f"Total reclaimed space: {output.human_size(resp.space_reclaimed)}")


def _build_system() -> None:
    system_app.command("df")(system_df)


def register(app: typer.Typer, only: str | None = None) -> None:
    add(app, only, "pull", pull)
    add(app, only, "push", push)
    add(app, only, "login", login)
    add(app, only, "logout", logout)
    add(app, only, "save", save)
    add(app, only, "history", history)
    add_group(app, only, "system", system_app, _build_system)
