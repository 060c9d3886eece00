"""Image commands: images, import, load, rmi, tag, image inspect."""

from __future__ import annotations

import json
import os
import sys

import typer

from cli import output
from cli.client import Client, CliError
from cli.commands import add, add_group

image_app = typer.Typer(help="Manage images", no_args_is_help=True)


def image_json(img) -> dict:  # noqa: ANN001
    """Docker's `image inspect` shape."""
    cfg = img.config
    try:
        raw = json.loads(img.config_json or "{}")
    except ValueError:
        raw = {}
    extra = {k: v for k, v in (raw.get("config") or {}).items() if k in ("Healthcheck", "OnBuild", "Shell")}
    return {
        "Id": img.id,
        "RepoTags": list(img.repo_tags),
        "RepoDigests": list(img.repo_digests),
        "Created": output.rfc3339(img.created_unix * 1_000_000_000),
        "Size": img.size,
        "Architecture": img.architecture,
        "Os": img.os,
        "Config": {
            "Env": list(cfg.env) or None,
            "Entrypoint": list(cfg.entrypoint) or None,
            "Cmd": list(cfg.cmd) or None,
            "WorkingDir": cfg.working_dir,
            "User": cfg.user,
            "Labels": dict(cfg.labels) or None,
            "StopSignal": cfg.stop_signal or None,
            "ExposedPorts": {p: {} for p in cfg.exposed_ports} or None,
            "Volumes": {v: {} for v in cfg.volumes} or None,
            **extra,
        },
        "Author": raw.get("author", ""),
        "RootFS": {"Type": "layers", "Layers": list(img.diff_ids)},
        "Metadata": {"ManifestDigest": img.manifest_digest},
    }


def _split_tag(ref: str) -> tuple[str, str]:
    name, _, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, "<none>" if not digest else "<none>"


def images(repository: str = typer.Argument("", help="Only images of this repository"),
           quiet: bool = typer.Option(False, "-q", "--quiet", help="Only show image IDs"),
           all_: bool = typer.Option(False, "-a", "--all", help="Show all images"),
           digests: bool = typer.Option(False, "--digests", help="Show digests"),
           no_trunc: bool = typer.Option(False, "--no-trunc", help="Don't truncate output")) -> None:
    """List images."""
    client = Client()
    imgs = client.call("ListImages", client.image.ListImagesRequest(all=all_, reference=repository)).images
    if quiet:
        seen = []
        for img in imgs:
            ident = img.id if no_trunc else output.short_id(img.id)
            if ident not in seen:
                seen.append(ident)
                print(ident)
        return
    rows = []
    for img in imgs:
        ident = img.id if no_trunc else output.short_id(img.id)
        for repo, tag, digest in _image_rows(img):
            row = [repo, tag, ident, output.ago(img.created_unix), output.human_size(img.size)]
            if digests:
                row.insert(2, digest)
            rows.append(row)
    headers = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
    if digests:
        headers.insert(2, "DIGEST")
    output.table(headers, rows)


def _image_rows(img) -> list[tuple[str, str, str]]:  # noqa: ANN001
    """(repository, tag, digest) rows as `docker images --digests` shows them: a repository's
    digest next to each of its tags, and a `<none>` tag row for a digest without a tag."""
    by_repo: dict[str, str] = {}
    for rd in img.repo_digests:
        name, _, digest = rd.partition("@")
        by_repo.setdefault(name, digest)
    rows = []
    for ref in img.repo_tags:
        repo, tag = _split_tag(ref)
        rows.append((repo, tag, by_repo.get(repo, "<none>")))
    tagged = {r for r, _, _ in rows}
    for repo, digest in by_repo.items():
        if repo not in tagged:
            rows.append((repo, "<none>", digest))
    return rows or [("<none>", "<none>", "<none>")]


def import_(file: str = typer.Argument(..., help="Rootfs tarball (or - for stdin)"),
            reference: str = typer.Argument("", help="REPOSITORY[:TAG] for the new image"),
            message: str = typer.Option("", "-m", "--message", help="Commit message")) -> None:
    """Import the contents from a tarball to create a filesystem image."""
    if file != "-" and not os.path.isfile(file):
        raise CliError(f"berth: open {file}: no such file or directory", 1)
    client = Client()

    def requests():  # noqa: ANN202
        yield client.image.ImportRequest(meta=client.image.ImportMeta(reference=reference, message=message))
        for chunk in client.file_chunks(file):
            yield client.image.ImportRequest(chunk=chunk)

    print(client.call("ImportImage", requests()).id)


def load(input_: str = typer.Option("-", "-i", "--input", help="Read from tar archive file, instead of STDIN"),
         quiet: bool = typer.Option(False, "-q", "--quiet", help="Suppress the load output")) -> None:
    """Load an image from a docker-save or OCI-layout tar archive."""
    if input_ != "-" and not os.path.isfile(input_):
        raise CliError(f"berth: open {input_}: no such file or directory", 1)
    if input_ == "-" and sys.stdin.isatty():
        raise CliError("berth: requested load from stdin, but stdin is empty", 1)
    client = Client()
    resp = client.call("LoadImage", (client.image.LoadRequest(chunk=c) for c in client.file_chunks(input_)))
    if not quiet:
        for line in resp.loaded:
            print(line)


def rmi(images_: list[str] = typer.Argument(..., metavar="IMAGE..."),
        force: bool = typer.Option(False, "-f", "--force", help="Force removal of the image")) -> None:
    """Remove one or more images."""
    client = Client()
    failed = False
    for ref in images_:
        try:
            resp = client.call("RemoveImage", client.image.RemoveImageRequest(reference=ref, force=force))
        except CliError as err:
            sys.stderr.write(f"{err}\n")
            failed = True
            continue
        for u in resp.untagged:
            print(f"Untagged: {u}")
        for d in resp.deleted:
            print(f"Deleted: {d}")
    if failed:
        raise CliError("", 1)


def tag(source: str = typer.Argument(...), target: str = typer.Argument(...)) -> None:
    """Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE."""
    client = Client()
    client.call("TagImage", client.image.TagImageRequest(source=source, target=target))


def image_inspect(targets: list[str] = typer.Argument(...),
                  format_: str = typer.Option("", "-f", "--format")) -> None:
    """Display detailed information on one or more images."""
    from cli.commands.containers import _print_inspect

    client = Client()
    found, failed = [], False
    for t in targets:
        try:
            found.append(image_json(client.call("InspectImage", client.image.InspectImageRequest(reference=t))))
        except CliError as err:
            sys.stderr.write(f"{err}\n")
            failed = True
    _print_inspect(found, format_)
    if failed:
        raise CliError("", 1)


def _build_group() -> None:
    from cli.commands import registry

    image_app.command("pull")(registry.pull)
    image_app.command("push")(registry.push)
    image_app.command("save")(registry.save)
    image_app.command("history")(registry.history)
    image_app.command("prune")(registry.image_prune)
    image_app.command("ls")(images)
    image_app.command("import")(import_)
    image_app.command("load")(load)
    image_app.command("rm")(rmi)
    image_app.command("tag")(tag)
    image_app.command("inspect")(image_inspect)


def register(app: typer.Typer, only: str | None = None) -> None:
    add(app, only, "images", images)
    add(app, only, "import", import_)
    add(app, only, "load", load)
    add(app, only, "rmi", rmi)
    add(app, only, "tag", tag)
    add_group(app, only, "image", image_app, _build_group)
