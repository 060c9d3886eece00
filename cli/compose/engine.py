"""What the compose commands do, against the api through the client SDK.

Projects exist only as labels: containers, networks and volumes carrying
`com.docker.compose.project=<name>` belong to it, so `down` and `ps` find them
without any state on the client side.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from cli.client import Client, CliError
from cli.compose import graph
from cli.compose.errors import ComposeError
from cli.compose.loader import Project
from cli.compose.runspec import (
    LABEL_HASH,
    LABEL_IMAGE,
    LABEL_NETWORK,
    LABEL_NUMBER,
    LABEL_PROJECT,
    LABEL_SERVICE,
    LABEL_VOLUME,
    config_hash,
    container_name,
    run_spec,
)

HEALTH_POLL = 0.25


def say(kind: str, name: str, state: str) -> None:
    """docker compose's progress lines (on stderr, so stdout stays for data)."""
    sys.stderr.write(f" {kind} {name}  {state}\n")
    sys.stderr.flush()


class Engine:
    """One project against one api connection."""

    def __init__(self, project: Project, client: Client | None = None) -> None:
        from berth.api.v1 import network_pb2_grpc
        from berth.runtime.v1 import network_pb2, storage_pb2

        self.project = project
        self.client = client or Client()
        self.nets = self.client.service(network_pb2_grpc.NetworksStub, network_pb2)
        self.vols = self.client.service(network_pb2_grpc.VolumesStub, storage_pb2)

    # ---- finding the project's objects -------------------------------------------------
    def containers(self, services: list[str] | None = None, all_: bool = True,
                   orphans: bool | None = False) -> list[Any]:
        """The project's containers (by label), in start order of their services.
        orphans: False = only the file's services, True = only orphans, None = both."""
        c = self.client
        found = [x for x in c.call("ListContainers", c.runtime.ListRequest(all=all_)).containers
                 if x.spec.labels.get(LABEL_PROJECT) == self.project.name]
        known = self.project.services
        if orphans is True:
            found = [x for x in found if x.spec.labels.get(LABEL_SERVICE) not in known]
        elif orphans is False:
            found = [x for x in found if x.spec.labels.get(LABEL_SERVICE) in known]
        if services:
            found = [x for x in found if x.spec.labels.get(LABEL_SERVICE) in services]
        order = {s: i for i, s in enumerate(graph.start_order(known))}
        return sorted(found, key=lambda x: (order.get(x.spec.labels.get(LABEL_SERVICE), -1),
                                            int(x.spec.labels.get(LABEL_NUMBER, "1") or 1), x.name))

    def service_container(self, service: str) -> Any | None:
        found = self.containers([service])
        return found[0] if found else None

    def running_container(self, service: str) -> Any:
        c = self.service_container(service)
        if c is None or c.status != "running":
            raise ComposeError(f"service \"{service}\" is not running")
        return c

    # ---- networks and volumes ----------------------------------------------------------
    def ensure_networks(self, services: list[str]) -> None:
        used = {n for s in services for n in self.project.services[s]["networks"]}
        for key in sorted(used):
            conf = self.project.networks[key]
            try:
                self.nets.call("InspectNetwork", self.nets.pb.NetworkRef(name=conf["name"]))
                continue
            except CliError:
                if conf.get("external"):
                    raise ComposeError(f"network {conf['name']} declared as external, but could not be found") \
                        from None
            self.nets.call("CreateNetwork", self.nets.pb.CreateNetworkRequest(
                name=conf["name"], driver="bridge", subnet=conf.get("subnet", ""), gateway=conf.get("gateway", ""),
                internal=conf.get("internal", False),
                labels={**conf.get("labels", {}), LABEL_PROJECT: self.project.name, LABEL_NETWORK: key}))
            say("Network", conf["name"], "Created")

    def ensure_volumes(self, services: list[str]) -> None:
        used = {m["source"] for s in services for m in self.project.services[s]["volumes"]
                if m["type"] == "volume" and m.get("source")}
        for key in sorted(used):
            conf = self.project.volumes[key]
            try:
                self.vols.call("InspectVolume", self.vols.pb.VolumeRef(name=conf["name"]))
                continue
            except CliError:
                if conf.get("external"):
                    raise ComposeError(f"external volume \"{conf['name']}\" not found") from None
            self.vols.call("CreateVolume", self.vols.pb.CreateVolumeRequest(
                name=conf["name"], driver="local",
                labels={**conf.get("labels", {}), LABEL_PROJECT: self.project.name, LABEL_VOLUME: key}))
            say("Volume", conf["name"], "Created")

    # ---- images ------------------------------------------------------------------------
    def image_id(self, service: str) -> str:
        """The id of the service's image, "" when it is not stored."""
        c = self.client
        try:
            return c.call("InspectImage", c.image.InspectImageRequest(reference=self.project.image_of(service))).id
        except CliError:
            return ""

    def pull(self, services: list[str], quiet: bool = True, ignore_failures: bool = False) -> None:
        from cli.auth import auth_for, registry_of
        from cli.commands.registry import _follow, images_client

        api = images_client()
        for s in services:
            svc = self.project.services[s]
            if "image" not in svc or (svc.get("build") and svc.get("pull_policy") == "build"):
                continue
            ref = svc["image"]
            say("Image", ref, "Pulling")
            try:
                _follow(api.stream("Pull", api.pb.PullRequest(reference=ref, auth=auth_for(api.client,
                                                                                            registry_of(ref)))),
                        quiet)
            except CliError as err:
                if ignore_failures and svc.get("build"):
                    continue
                why = str(err).removeprefix("Error response from daemon: ")
                raise ComposeError(f'service "{s}": pulling {ref}: {why}') from None
            say("Image", ref, "Pulled")

    def build(self, services: list[str], no_cache: bool = False, pull: bool = False) -> None:
        from cli.compose.build import build_image

        for s in services:
            conf = self.project.services[s].get("build")
            if not conf:
                continue
            say("Service", s, "Building")
            build_image(self.client, conf, self.project.image_of(s), no_cache=no_cache, pull=pull, service=s)
            say("Service", s, "Built")

    def ensure_images(self, services: list[str], build: bool, pull: bool) -> None:
        """--build: build every service that has a build section; missing images: build or pull;
        --pull or pull_policy always: pull; pull_policy never: a missing image is an error."""
        svcs = self.project.services
        present = {s: bool(self.image_id(s)) for s in services}
        to_build = [s for s in services if svcs[s].get("build") and (build or not present[s])]
        to_pull = []
        for s in services:
            if s in to_build or ("image" not in svcs[s]):
                continue
            policy = svcs[s].get("pull_policy", "missing")
            if policy == "never" or (policy == "build" and svcs[s].get("build")):
                if not present[s]:
                    raise ComposeError(f'service "{s}": image {svcs[s]["image"]} not found '
                                       f'(pull_policy: {policy})')
            elif pull or policy == "always" or not present[s]:
                to_pull.append(s)
        self.pull(to_pull)
        self.build(to_build)

    # ---- containers --------------------------------------------------------------------
    def converge(self, service: str, force_recreate: bool = False) -> tuple[str, bool]:
        """Make the service's container match the file: keep, recreate or create it.
        Returns its id and whether it was (re)created."""
        existing = self.containers([service])
        want_hash, image_id = config_hash(self.project, service), self.image_id(service)
        name = container_name(self.project, service)
        for c in existing[1:]:  # a scale-down from an older run
            self._remove(c, stop=True)
        if existing:
            c = existing[0]
            same = c.spec.labels.get(LABEL_HASH) == want_hash and (not image_id or
                                                                   c.spec.labels.get(LABEL_IMAGE) == image_id)
            if same and not force_recreate:
                return c.id, False
            say("Container", name, "Recreate")
            self._remove(c, stop=True)
        else:
            say("Container", name, "Creating")
        spec, extra = run_spec(self.client, self.project, service, image_id)
        try:
            created = self.client.call("CreateContainer", spec)
        except CliError as err:
            raise ComposeError(f'service "{service}": {err}') from None
        for conn in extra:
            self.nets.call("ConnectNetwork", self.nets.pb.ConnectRequest(container=created.id, **conn))
        say("Container", name, "Recreated" if existing else "Created")
        return created.id, True

    def _remove(self, c: Any, stop: bool = True) -> None:
        rt = self.client.runtime
        if stop and c.status == "running":
            self.client.call("StopContainer", rt.StopRequest(id=c.id, timeout=-1))
        self.client.call("RemoveContainer", rt.RemoveRequest(id=c.id, force=True))

    def start_container(self, service: str, cid: str) -> None:
        c = self.client
        info = c.call("InspectContainer", c.api.ContainerRequest(id=cid))
        if info.status == "running":
            say("Container", info.name, "Running")
            return
        say("Container", info.name, "Starting")
        c.call("StartContainer", c.api.ContainerRequest(id=cid))
        say("Container", info.name, "Started")

    def wait_for(self, service: str, dependency: str, condition: str) -> None:
        """Block until `dependency` meets the depends_on condition of `service`."""
        if condition == "service_started":
            return
        c = self.service_container(dependency)
        if c is None:
            raise ComposeError(f'service "{service}" depends on "{dependency}", which has no container')
        name = c.name
        if condition == "service_completed_successfully":
            say("Container", name, "Waiting")
            code = self.client.call("WaitContainer", self.client.api.ContainerRequest(id=c.id)).exit_code
            if code != 0:
                raise ComposeError(f'service "{dependency}" didn\'t complete successfully: exit {code}')
            say("Container", name, "Exited")
            return
        test = list(c.spec.healthcheck.test)
        if not test or test[0] == "NONE":
            raise ComposeError(f"container {name} has no healthcheck configured")
        say("Container", name, "Waiting")
        while True:
            info = self.client.call("InspectContainer", self.client.api.ContainerRequest(id=c.id))
            if info.health.status == "healthy":
                say("Container", name, "Healthy")
                return
            if info.health.status == "unhealthy":
                raise ComposeError(f"dependency failed to start: container {name} is unhealthy")
            if info.status != "running":
                raise ComposeError(f"dependency failed to start: container {name} exited ({info.exit_code})")
            time.sleep(HEALTH_POLL)

    def up(self, services: list[str], build: bool = False, pull: bool = False, force_recreate: bool = False,
           remove_orphans: bool = False) -> list[str]:
        """Networks, volumes, images, then each service in dependency order; returns container ids."""
        selected = graph.with_dependencies(self.project.services, services or self.project.services)
        order = graph.start_order(self.project.services, selected)
        orphans = self.containers(all_=True, orphans=True)
        if orphans and remove_orphans:
            for c in orphans:
                self._remove(c)
                say("Container", c.name, "Removed")
        elif orphans:
            sys.stderr.write(f"WARN: Found orphan containers ({', '.join(c.name for c in orphans)}) for this "
                             "project. Run `berth compose up --remove-orphans` to clean them up.\n")
        self.ensure_networks(order)
        self.ensure_volumes(order)
        self.ensure_images(order, build, pull)
        ids: list[str] = []
        for s in order:
            for dep, cond in self.project.services[s]["depends_on"].items():
                if dep in selected:
                    self._wait_or_warn(s, dep, cond)
            cid, _ = self.converge(s, force_recreate)
            self.start_container(s, cid)
            ids.append(cid)
        return ids

    def _wait_or_warn(self, service: str, dep: str, cond: dict) -> None:
        try:
            self.wait_for(service, dep, cond["condition"])
        except ComposeError as err:
            if cond.get("required", True):
                raise
            sys.stderr.write(f"WARN: optional dependency: {err}\n")

    # ---- stop / start / remove ---------------------------------------------------------
    def each(self, containers: list[Any], fn: Callable[[Any], None]) -> None:
        failed = None
        for c in containers:
            try:
                fn(c)
            except CliError as err:
                sys.stderr.write(f"{err}\n")
                failed = err
        if failed is not None:
            raise CliError("", 1)

    def stop(self, services: list[str], timeout: int = -1) -> None:
        rt = self.client.runtime
        running = [c for c in reversed(self.containers(services)) if c.status == "running"]

        def stop_one(c: Any) -> None:
            say("Container", c.name, "Stopping")
            self.client.call("StopContainer", rt.StopRequest(id=c.id, timeout=timeout))
            say("Container", c.name, "Stopped")

        self.each(running, stop_one)

    def start(self, services: list[str]) -> None:
        selected = services or list(self.project.services)
        by_service = {c.spec.labels.get(LABEL_SERVICE): c for c in self.containers(selected)}
        if not by_service:
            raise ComposeError("no containers to start")
        for s in graph.start_order(self.project.services, set(by_service)):
            for dep, cond in self.project.services[s]["depends_on"].items():
                if dep in by_service:
                    self._wait_or_warn(s, dep, cond)
            self.start_container(s, by_service[s].id)

    def restart(self, services: list[str], timeout: int = -1) -> None:
        rt = self.client.runtime

        def restart_one(c: Any) -> None:
            say("Container", c.name, "Restarting")
            self.client.call("RestartContainer", rt.StopRequest(id=c.id, timeout=timeout))
            say("Container", c.name, "Started")

        self.each(self.containers(services), restart_one)

    def rm(self, services: list[str], stop_first: bool = False) -> None:
        found = self.containers(services)
        if stop_first:
            self.stop(services)
            found = self.containers(services)
        stopped = [c for c in found if c.status != "running"]
        if not stopped:
            sys.stderr.write("No stopped containers\n")
            return

        def remove(c: Any) -> None:
            self.client.call("RemoveContainer", self.client.runtime.RemoveRequest(id=c.id))
            say("Container", c.name, "Removed")

        self.each(stopped, remove)

    def down(self, volumes: bool = False, rmi: str = "", remove_orphans: bool = False, timeout: int = -1) -> None:
        """Containers (dependents first), then the project's networks, then (-v) its volumes, (--rmi) images."""
        containers = list(reversed(self.containers(orphans=None if remove_orphans else False)))
        for c in containers:
            if c.status == "running":
                say("Container", c.name, "Stopping")
                self.client.call("StopContainer", self.client.runtime.StopRequest(id=c.id, timeout=timeout))
            self.client.call("RemoveContainer", self.client.runtime.RemoveRequest(id=c.id, force=True))
            say("Container", c.name, "Removed")
        left = self.containers(orphans=True) if not remove_orphans else []
        if left:
            sys.stderr.write(f"WARN: Found orphan containers ({', '.join(c.name for c in left)}) for this project. "
                             "Run `berth compose down --remove-orphans` to clean them up.\n")
        for conf in (v for _, v in sorted(self.project.networks.items())):
            if conf.get("external"):
                continue
            try:
                net = self.nets.call("InspectNetwork", self.nets.pb.NetworkRef(name=conf["name"]))
            except CliError:
                continue
            if net.labels.get(LABEL_PROJECT) not in (None, "", self.project.name):
                continue
            try:
                self.nets.call("RemoveNetwork", self.nets.pb.NetworkRef(name=conf["name"]))
                say("Network", conf["name"], "Removed")
            except CliError as err:
                sys.stderr.write(f"{err}\n")
        if volumes:
            for conf in (v for _, v in sorted(self.project.volumes.items())):
                if conf.get("external"):
                    continue
                try:
                    self.vols.call("RemoveVolume", self.vols.pb.RemoveVolumeRequest(name=conf["name"]))
                    say("Volume", conf["name"], "Removed")
                except CliError as err:
                    if "no such volume" not in str(err):
                        sys.stderr.write(f"{err}\n")
        if rmi:
            self._remove_images(rmi)

    def _remove_images(self, mode: str) -> None:
        c = self.client
        refs = set()
        for s, svc in self.project.services.items():
            if mode == "all" or not svc.get("image"):
                refs.add(self.project.image_of(s))
        for ref in sorted(refs):
            try:
                c.call("RemoveImage", c.image.RemoveImageRequest(reference=ref))
                say("Image", ref, "Removed")
            except CliError as err:
                if "No such image" not in str(err) and "no such image" not in str(err):
                    sys.stderr.write(f"{err}\n")
