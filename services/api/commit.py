"""diff / commit / export of a container: the runtime knows the container, the image
service owns its snapshot (keyed by the container id) and does the file work.

`commit` records the container's own settings (env, command, working dir, user,
labels) over its image's config, as Docker does, and pauses a running container
for the moment its upper dir is read, so the layer is a consistent picture.
"""

from __future__ import annotations

from collections.abc import Iterator

from berth.api.v1 import api_pb2
from berth.image.v1 import image_pb2
from berth.runtime.v1 import runtime_pb2
from services.api.downstream import Downstream
from services.api.events import EventLog


def _container(runtime: Downstream, ref: str) -> runtime_pb2.Container:
    return runtime.Inspect(runtime_pb2.ContainerRef(id=ref))


def diff(runtime: Downstream, image: Downstream, ref: str) -> image_pb2.DiffResponse:
    c = _container(runtime, ref)
    return image.Diff(image_pb2.DiffRequest(snapshot_key=c.id))


def export(runtime: Downstream, image: Downstream, ref: str) -> Iterator[image_pb2.ExportChunk]:
    c = _container(runtime, ref)
    yield from image.Export(image_pb2.ExportRequest(snapshot_key=c.id))


def split_command(args: list[str], cfg: image_pb2.ImageConfig) -> tuple[list[str], list[str]]:
    """Entrypoint and Cmd for the committed config: the runtime keeps only their
    concatenation, so keep the image's entrypoint when the command still starts with it."""
    entrypoint = list(cfg.entrypoint)
    if entrypoint and args[:len(entrypoint)] == entrypoint:
        return entrypoint, args[len(entrypoint):]
    return [], args


def commit(runtime: Downstream, image: Downstream, events: EventLog,
           req: api_pb2.CommitContainerRequest) -> image_pb2.Image:
    c = _container(runtime, req.id)
    parent = image.Inspect(image_pb2.InspectImageRequest(reference=c.spec.image_id))
    entrypoint, cmd = split_command(list(c.spec.args), parent.config)
    config = image_pb2.ImageConfig(env=c.spec.env, entrypoint=entrypoint, cmd=cmd,
                                   working_dir="" if c.spec.cwd == "/" and not parent.config.working_dir
                                   else c.spec.cwd,
                                   user=c.spec.user, labels=c.spec.labels)
    paused_here = False
    if req.pause and c.status == "running" and not c.paused:
        runtime.Pause(runtime_pb2.ContainerRef(id=c.id))
        paused_here = True
    try:
        new = image.Commit(image_pb2.CommitRequest(
            snapshot_key=c.id, reference=req.reference, config=config, config_set=True,
            changes=list(req.changes), comment=req.comment, author=req.author,
            created_by=" ".join(c.spec.args)))
    finally:
        if paused_here:
            runtime.Unpause(runtime_pb2.ContainerRef(id=c.id))
    events.record("container", "commit", c.id, name=c.name, comment=req.comment)
    return new
