"""The executor: stages run in order, each step a cached state transition.

A state is an image under construction (config + layers). Metadata steps only
change the config and add an `empty_layer` history entry; RUN, COPY, ADD (and a
WORKDIR that must create its directory) prepare a snapshot on the current
layers, change it (RUN through the caller, which runs the container; COPY and
ADD by writing the upper dir), and commit the upper dir as one new layer. Every
step is looked up in the cache first. Only the last stage's state becomes an
image, recorded all at once at the end; a failure records nothing, and every
snapshot and scratch file of the build is removed either way.
"""

from __future__ import annotations

import contextlib
import copy as copymod
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from berth.image.v1 import image_pb2
from berth.types.v1 import types_pb2
from services.common.errors import BerthError, FailedPrecondition, InvalidArgument, NotFound
from services.image import distribution, reference
from services.image.archive import MT_OCI_CONFIG, MT_OCI_MANIFEST, layer_media_type
from services.image.build import confedit, copy
from services.image.build.cache import BuildCache, State, step_key
from services.image.build.context import Context
from services.image.build.dockerfile import (
    PREDEFINED_ARGS,
    Dockerfile,
    Expander,
    Instruction,
    Stage,
    arg_pairs,
    parse_instruction,
)
from services.image.build.fs import RootView, clean_rel
from services.image.changes import drop_mount_points, write_layer
from services.image.imageconfig import host_arch, now_rfc3339, parse_config
from services.image.ingest import Ingest, next_chain
from services.image.models import LayerRow
from services.image.store import ImageRecord, ImageStore, NewImage

log = logging.getLogger("berth.image.build")

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FS_STEPS = {"RUN", "COPY", "ADD"}

Emit = Callable[[image_pb2.BuildEvent], None]
RunFn = Callable[[image_pb2.RunStep], image_pb2.RunResult]
PullFn = Callable[[str, str, Callable[[str], None]], None]


@dataclass
class Options:
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str = ""
    no_cache: bool = False
    pull: bool = False
    platform: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    network: str = ""


def _json(obj: Any) -> bytes:
    """Sorted keys: a rebuild from the cache (stored sorted) gives the same bytes, so the same id."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class StageState:
    stage: Stage
    state: State
    args: dict[str, str] = field(default_factory=dict)  # ARGs declared in the stage, with values
    cmd_set: bool = False


class Builder:
    """One build: a parsed Dockerfile, a received context, and the caller's RUN executor."""

    def __init__(self, store: ImageStore, cache: BuildCache, dockerfile: Dockerfile, ctx: Context, opts: Options,
                 emit: Emit, run: RunFn, pull: PullFn, cancel: threading.Event | None = None) -> None:
        self.store = store
        self.cache = cache
        self.df = dockerfile
        self.ctx = ctx
        self.opts = opts
        self.emit = emit
        self.run_fn = run
        self.pull_fn = pull
        self.cancel = cancel or threading.Event()
        self.id = uuid.uuid4().hex[:12]
        self.step_no = 0
        self.total = 0
        self.done: dict[int, State] = {}
        self.leases: list[str] = []
        self.used_keys: list[str] = []
        self.used_args: set[str] = set()
        self.global_args: dict[str, str] = {}

    # ---- helpers ------------------------------------------------------------

    def _fail(self, line: int, message: str, cls: type[BerthError] = InvalidArgument) -> BerthError:
        return cls(f"{self.df.filename}:{line}: {message}" if line else f"{self.df.filename}: {message}")

    def _status(self, text: str) -> None:
        self.emit(image_pb2.BuildEvent(status=text))

    def _message(self, text: str, stderr: bool = False) -> None:
        self.emit(image_pb2.BuildEvent(output=types_pb2.Output(
            stream=types_pb2.Output.STDERR if stderr else types_pb2.Output.STDOUT, data=text.encode(),
            time_unix_nano=time.time_ns())))

    def _hold(self, state: State) -> None:
        for name in (*state.chains, *state.blobs):
            self.store.lease(name)
            self.leases.append(name)

    def release(self) -> None:
        for name in self.leases:
            self.store.release(name)
        self.leases.clear()
        self.cache.unuse(self.used_keys)
        self.used_keys.clear()

    # ---- the build ------------------------------------------------------------

    def run(self) -> ImageRecord:
        try:
            last = self._target_index()
            self._global_args()
            needed = self._needed_stages(last)
            stages = [s for s in self.df.stages[:last + 1] if s.index in needed]
            self.total = sum(1 + len(s.instructions) for s in stages)
            for stage in stages:
                if self.cancel.is_set():
                    raise FailedPrecondition("build cancelled")
                self.done[stage.index] = self._run_stage(stage)
            return self._record(self.done[last])
        finally:
            self.release()

    def _needed_stages(self, last: int) -> set[int]:
        """The target and the stages it uses (FROM a stage, COPY/ADD --from a stage), like
        BuildKit: a stage nothing depends on is not built."""
        expand = Expander(self.global_args, self.df.escape)
        needed: set[int] = set()
        todo = [last]
        while todo:
            idx = todo.pop()
            if idx in needed:
                continue
            needed.add(idx)
            stage = self.df.stages[idx]
            refs = [expand.word(stage.base)]
            refs += [expand.word(ins.flags["from"]) for ins in stage.instructions
                     if ins.keyword in ("COPY", "ADD") and ins.flags.get("from")]
            for ref in refs:
                dep = self.df.stage_index(ref)
                if dep is not None and dep < idx:
                    todo.append(dep)
        return needed

    def _target_index(self) -> int:
        if not self.opts.target:
            return len(self.df.stages) - 1
        idx = next((s.index for s in self.df.stages if s.name == self.opts.target.lower()), None)
        if idx is None:
            raise InvalidArgument(f"failed to reach build target {self.opts.target} in Dockerfile")
        return idx

    def _global_args(self) -> None:
        for ins in self.df.global_args:
            for name, default in arg_pairs(ins, Expander(self.global_args, self.df.escape)):
                if name in self.opts.build_args:
                    self.global_args[name] = self.opts.build_args[name]
                    self.used_args.add(name)
                elif default is not None:
                    self.global_args[name] = default

    # ---- stages ---------------------------------------------------------------

    def _begin(self, stage: Stage, ins_text: str, line: int) -> tuple[int, float]:
        self.step_no += 1
        self.emit(image_pb2.BuildEvent(step=image_pb2.BuildStep(
            number=self.step_no, total=self.total, stage=stage.label, line=line, instruction=ins_text)))
        return self.step_no, time.monotonic()

    def _end(self, stage: Stage, number: int, start: float, ins_text: str, line: int, cached: bool) -> None:
        self.emit(image_pb2.BuildEvent(step=image_pb2.BuildStep(
            number=number, total=self.total, stage=stage.label, line=line, instruction=ins_text, cached=cached,
            duration_ns=int((time.monotonic() - start) * 1e9), done=True)))

    def _run_stage(self, stage: Stage) -> State:
        text = f"FROM {stage.base}" + (f" AS {stage.name}" if stage.name else "")
        number, start = self._begin(stage, text, stage.line)
        state = self._base(stage)
        self._end(stage, number, start, text, stage.line, False)
        ss = StageState(stage, state)
        triggers = list(state.config.get("config", {}).get("OnBuild") or [])
        if triggers:
            ss.state.config["config"]["OnBuild"] = None
            for trigger in triggers:
                ins = parse_instruction(stage.line, trigger, filename=self.df.filename)
                self._message(f"# Executing ONBUILD trigger: {trigger}\n")
                self._step(ss, ins)
        for ins in stage.instructions:
            if self.cancel.is_set():
                raise FailedPrecondition("build cancelled")
            number, start = self._begin(stage, ins.original, ins.line)
            cached = self._step(ss, ins)
            self._end(stage, number, start, ins.original, ins.line, cached)
        return ss.state

    def _base(self, stage: Stage) -> State:
        base = Expander(self.global_args, self.df.escape).word(stage.base)
        if not base:
            raise self._fail(stage.line, f"base name ({stage.base}) should not be blank")
        for prev in self.df.stages[:stage.index]:
            if prev.name and prev.name == base.lower():
                return self.done[prev.index].copy()
        if base.lower() == "scratch":
            return State({"architecture": host_arch(), "os": "linux", "config": {},
                          "rootfs": {"type": "layers", "diff_ids": []}, "history": []})
        platform = Expander(self.global_args, self.df.escape).word(stage.platform) or self.opts.platform
        try:
            return self._image_state(base, platform, self.opts.pull)
        except BerthError as exc:
            raise self._fail(stage.line, f"FROM {base}: {exc}", type(exc)) from None

    def _image_state(self, ref: str, platform: str, always_pull: bool) -> State:
        rec = None
        if not always_pull:
            try:
                rec = self.store.inspect(ref)
            except NotFound:
                rec = None
        if rec is None:
            self._status(f"Pulling {ref}")
            self.pull_fn(ref, platform, self._status)
            rec = self.store.inspect(ref)
        state = self._state_of(rec)
        self._hold(state)
        return state

    def _state_of(self, rec: ImageRecord) -> State:
        config = copymod.deepcopy(parse_config(rec.row.config_json).raw)
        layers: list[dict[str, Any]] = []
        if rec.row.diff_ids:
            doc = distribution.parse(self.store.content.read(rec.row.manifest_digest))
            if not isinstance(doc, distribution.Manifest) or len(doc.layers) != len(rec.row.diff_ids):
                raise InvalidArgument(f"image {rec.row.id} has no usable manifest to build on")
            layers = [{"mediaType": d.media_type, "digest": d.digest, "size": d.size, "diffID": diff}
                      for d, diff in zip(doc.layers, rec.row.diff_ids, strict=True)]
        config.setdefault("config", {})
        config["config"] = config["config"] or {}
        return State(config, layers)

    # ---- steps ----------------------------------------------------------------

    def _expander(self, ss: StageState) -> Expander:
        env = dict(ss.args)
        for item in ss.state.config["config"].get("Env") or []:
            k, _, v = item.partition("=")
            env[k] = v
        return Expander(env, self.df.escape)

    def _args_in_effect(self, ss: StageState) -> dict[str, str]:
        """Build args a RUN sees: declared ones with values, minus names ENV already sets."""
        env_keys = {e.partition("=")[0] for e in ss.state.config["config"].get("Env") or []}
        return {k: v for k, v in ss.args.items() if k not in env_keys}

    def _history(self, ss: StageState, created_by: str, empty: bool) -> None:
        created = now_rfc3339()
        entry: dict[str, Any] = {"created": created, "created_by": created_by}
        if empty:
            entry["empty_layer"] = True
        ss.state.config["created"] = created
        ss.state.config["history"] = [*(ss.state.config.get("history") or []), entry]

    def _nop(self, ss: StageState, comment: str, single: bool = False) -> str:
        shell = confedit.shell_of(ss.state.config["config"])
        return " ".join([*shell, ("#(nop) " + comment) if single else f"#(nop)  {comment}"])

    def _step(self, ss: StageState, ins: Instruction) -> bool:
        """Run one instruction; True if it came from the cache."""
        kw = ins.keyword
        expand = self._expander(ss)
        args = self._args_in_effect(ss)
        if kw == "ARG":
            return self._arg(ss, ins, expand)
        if kw in FS_STEPS or kw == "WORKDIR":
            return self._fs_step(ss, ins, expand, args)
        key = step_key(ss.state, ins.original, args)
        cached = self._lookup(key)
        if cached is not None:
            ss.state = cached
            if kw == "CMD":
                ss.cmd_set = True
            return True
        if kw == "MAINTAINER":
            ss.state.config["author"] = ins.rest
            comment = f"MAINTAINER {ins.rest}"
        else:
            try:
                comment = confedit.apply(ss.state.config["config"], ins, expand, cmd_set=ss.cmd_set)
            except InvalidArgument as exc:
                msg = str(exc)
                raise self._fail(ins.line, msg.split(": ", 1)[1] if msg.startswith("Dockerfile:") else msg) from None
        if kw == "CMD":
            ss.cmd_set = True
        self._history(ss, self._nop(ss, comment), empty=True)
        self.cache.put(key, ss.state)
        return False

    def _lookup(self, key: str) -> State | None:
        """The cached state after this step, held for the build; the key is marked in use
        either way (a miss is written under the same key), so a prune leaves it alone."""
        with self.store.lock:
            self.cache.use(key)
            self.used_keys.append(key)
            if self.opts.no_cache:
                return None
            state = self.cache.get(key)
            if state is not None:
                self._hold(state)
            return state

    def _arg(self, ss: StageState, ins: Instruction, expand: Expander) -> bool:
        pairs = arg_pairs(ins, expand)
        for name, default in pairs:
            if name in self.opts.build_args:
                ss.args[name] = self.opts.build_args[name]
                self.used_args.add(name)
            elif default is not None:
                ss.args[name] = default
            elif name in self.global_args:
                ss.args[name] = self.global_args[name]
        key = step_key(ss.state, ins.original, dict(ss.args))
        cached = self._lookup(key)
        if cached is not None:
            ss.state = cached
            return True
        comment = "ARG " + " ".join(n if d is None else f"{n}={d}" for n, d in pairs)
        self._history(ss, self._nop(ss, comment), empty=True)
        self.cache.put(key, ss.state)
        return False

    def _fs_step(self, ss: StageState, ins: Instruction, expand: Expander, args: dict[str, str]) -> bool:
        kw = ins.keyword
        config = ss.state.config["config"]
        content = ""
        plan = None
        if kw == "WORKDIR":
            try:
                new_dir = confedit.workdir_join(config.get("WorkingDir") or "", expand.word(ins.rest.strip()))
            except InvalidArgument as exc:
                raise self._fail(ins.line, str(exc)) from None
            content = new_dir
        elif kw in ("COPY", "ADD"):
            plan = self._copy_plan(ss, ins, expand)
            content = copy.content_hash(plan)
        elif kw == "RUN":
            content = json.dumps([h.content for h in ins.heredocs])
        key = step_key(ss.state, ins.original, args, content)
        cached = self._lookup(key)
        if cached is not None:
            ss.state = cached
            return True
        view = RootView([self.store.layers.path(c).as_posix() for c in reversed(ss.state.chains)]
                        or [str(self.store.snapshots.empty_dir)])
        if kw == "WORKDIR":
            entry = view.lookup(view.resolve(clean_rel(new_dir)))
            config["WorkingDir"] = new_dir
            created_by = self._nop(ss, f"WORKDIR {new_dir}", single=True)
            if entry is not None and stat.S_ISDIR(entry.st.st_mode):
                self._history(ss, created_by, empty=True)
                self.cache.put(key, ss.state)
                return False
            self._in_snapshot(ss, lambda target, _mount: target.ensure_dir(clean_rel(new_dir)), created_by, key)
            return False
        if plan is not None:
            digest = content
            created_by = self._nop(ss, f"{kw} {copy.history_source(plan, digest)} in {plan.dest} ", single=True)

            def do_copy(target: RootView, _mount: types_pb2.Mount) -> None:
                plan.uid, plan.gid = copy.parse_chown(expand.word(ins.flags.get("chown", "")), target)
                try:
                    copy.execute(plan, target)
                except (InvalidArgument, OSError) as exc:
                    raise self._fail(ins.line, f"{kw} failed: {exc}", FailedPrecondition) from None

            self._in_snapshot(ss, do_copy, created_by, key)
            return False
        argv, created_by = self._run_command(ss, ins, args)

        def do_run(_target: RootView, mount: types_pb2.Mount) -> None:
            self._run(ss, ins, argv, mount, args)

        self._in_snapshot(ss, do_run, created_by, key)
        return False

    def _copy_plan(self, ss: StageState, ins: Instruction, expand: Expander) -> copy.CopyPlan:
        words = expand.words(ins.rest)
        if len(words) < 2:
            raise self._fail(ins.line, f"{ins.keyword} requires at least two arguments")
        source_from = expand.word(ins.flags.get("from", ""))
        target = RootView([self.store.layers.path(c).as_posix() for c in reversed(ss.state.chains)]
                          or [str(self.store.snapshots.empty_dir)])
        if source_from:
            src_view, what = self._from_view(ins, source_from), f"--from={source_from}"
        else:
            src_view, what = RootView([str(self.ctx.root)]), "build context"
        try:
            return copy.make_plan(ins.keyword, words, src_view, what, target,
                                  ss.state.config["config"].get("WorkingDir") or "/",
                                  expand.word(ins.flags.get("chown", "")), expand.word(ins.flags.get("chmod", "")),
                                  from_context=not source_from)
        except BerthError as exc:
            raise self._fail(ins.line, f"{ins.keyword} failed: {exc}", type(exc)) from None

    def _from_view(self, ins: Instruction, name: str) -> RootView:
        idx = self.df.stage_index(name)
        if idx is not None:
            if idx not in self.done:
                raise self._fail(ins.line, f"{ins.keyword} --from={name}: stage {name} is not built before this one")
            state = self.done[idx]
        else:
            try:
                state = self._image_state(name, self.opts.platform, False)
            except BerthError as exc:
                raise self._fail(ins.line, f"{ins.keyword} --from={name}: no build stage or image named {name}: "
                                           f"{exc}", type(exc)) from None
        layers = [self.store.layers.path(c).as_posix() for c in reversed(state.chains)]
        return RootView(layers or [str(self.store.snapshots.empty_dir)])

    def _run_command(self, ss: StageState, ins: Instruction, args: dict[str, str]) -> tuple[list[str], str]:
        config = ss.state.config["config"]
        shell = confedit.shell_of(config)
        exec_form = ins.json_args()
        if exec_form is not None:
            argv = exec_form
        elif ins.heredocs and ins.rest.strip() == f"<<{ins.heredocs[0].name}" and len(ins.heredocs) == 1:
            argv = [*shell, ins.heredocs[0].content]
        elif ins.heredocs:
            script = ins.rest + "\n" + "".join(f"{h.content}{h.name}\n" for h in ins.heredocs)
            argv = [*shell, script]
        else:
            argv = [*shell, ins.rest]
        shown = {k: v for k, v in args.items() if k not in PREDEFINED_ARGS or k in self.used_args}
        prefix = [f"|{len(shown)}", *sorted(f"{k}={v}" for k, v in shown.items())] if shown else []
        return argv, " ".join([*prefix, *argv])

    def _run(self, ss: StageState, ins: Instruction, argv: list[str], mount: types_pb2.Mount,
             args: dict[str, str]) -> None:
        config = ss.state.config["config"]
        env = list(config.get("Env") or [])
        if not any(e.startswith("PATH=") for e in env):
            env.insert(0, DEFAULT_PATH)
        env += [f"{k}={v}" for k, v in args.items()]
        step_id = f"{self.id}-{self.step_no}"
        result = self.run_fn(image_pb2.RunStep(id=step_id, rootfs=mount, args=argv, env=env,
                                               cwd=config.get("WorkingDir") or "/", user=config.get("User") or "",
                                               network=self.opts.network))
        if result.error:
            msg = f"{self.df.filename}:{ins.line}: RUN could not run: {result.error}"
            self._message(msg + "\n", stderr=True)
            raise FailedPrecondition(msg)
        if result.exit_code != 0:
            msg = (f"{self.df.filename}:{ins.line}: RUN exit code {result.exit_code}: the command "
                   f"'{' '.join(argv)}' returned a non-zero code: {result.exit_code}")
            self._message(msg + "\n", stderr=True)
            raise FailedPrecondition(msg)

    def _in_snapshot(self, ss: StageState, change: Callable[[RootView, types_pb2.Mount], None], created_by: str,
                     key: str) -> None:
        """Prepare a snapshot on the current layers, change it, commit its upper dir as a layer."""
        snap_key = f"build-{self.id}-{self.step_no}-{uuid.uuid4().hex[:6]}"
        lowers = [self.store.layers.path(c) for c in ss.state.chains]
        mount = self.store.snapshots.prepare(snap_key, lowers)
        try:
            pb_mount = types_pb2.Mount(type=mount.type, lowerdirs=mount.lowerdirs, upperdir=mount.upperdir,
                                       workdir=mount.workdir)
            target = RootView([mount.upperdir, *mount.lowerdirs], writable=True)
            change(target, pb_mount)
            self._commit_layer(ss, mount.upperdir, created_by, key)
        finally:
            with contextlib.suppress(NotFound):
                self.store.snapshots.remove(snap_key)

    def _commit_layer(self, ss: StageState, upper: str, created_by: str, key: str) -> None:
        """The upper dir becomes the layer: its tar is the blob (diff id = digest, uncompressed), and
        the dir itself, already in overlayfs's form, is renamed into the layer store (no unpack)."""
        chains = ss.state.chains
        drop_mount_points(Path(upper))
        size = sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(upper) for f in fs)
        writer = self.store.content.writer()
        try:
            write_layer(Path(upper), writer)  # type: ignore[arg-type]
            diff_id = writer.finish()
        except BaseException:
            writer.abort()
            raise
        chain = next_chain(chains[-1] if chains else None, diff_id)
        with self.store.lock:
            writer.commit()
            if not self.store.layers.exists(chain):
                os.chmod(upper, 0o755)
                os.rename(upper, self.store.layers.path(chain))
            _record_layer(self.store, chain, diff_id, size)
            ss.state.layers.append({"mediaType": layer_media_type(""), "digest": diff_id,
                                    "size": writer.size, "diffID": diff_id})
            ss.state.config["rootfs"] = {"type": "layers", "diff_ids": ss.state.diff_ids}
            self._history(ss, created_by, empty=False)
            self.cache.put(key, ss.state)  # leases the layer and blob while the row exists
            self._hold(ss.state)

    # ---- the image --------------------------------------------------------------

    def _record(self, state: State) -> ImageRecord:
        raw = copymod.deepcopy(state.config)
        if self.opts.labels:
            raw["config"]["Labels"] = {**(raw["config"].get("Labels") or {}), **self.opts.labels}
        raw["rootfs"] = {"type": "layers", "diff_ids": state.diff_ids}
        raw.setdefault("created", now_rfc3339())
        raw.pop("container", None)
        raw.pop("container_config", None)
        raw["config"] = {k: v for k, v in raw["config"].items() if v is not None}
        tags = [str(reference.parse_tag_target(t)) for t in self.opts.tags]
        with Ingest(self.store) as ingest:
            for name in (*state.chains, *state.blobs):
                ingest.hold(name)
            config_bytes = _json(raw)
            config_digest = ingest.add_blob(config_bytes)
            manifest = _json({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                              "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest,
                                         "size": len(config_bytes)},
                              "layers": [{"mediaType": la["mediaType"], "digest": la["digest"], "size": la["size"]}
                                         for la in state.layers]})
            manifest_digest = ingest.add_blob(manifest)
            cfg = parse_config(config_bytes)
            new = NewImage(config_json=config_bytes, config_digest=config_digest, manifest_digest=manifest_digest,
                           diff_ids=state.diff_ids, blobs=[manifest_digest, config_digest, *state.blobs],
                           created_unix=cfg.created_unix, architecture=cfg.architecture, os=cfg.os, tags=tags)
            (record,) = ingest.publish([new])
            ingest.finish()
        return record


def _record_layer(store: ImageStore, chain: str, diff_id: str, size: int) -> None:
    """A layer row for a step's layer, so later steps and the final image find it published."""
    with store.lock, store._session() as s:  # noqa: SLF001 - the image service's own DB
        try:
            with s.begin():
                if s.get(LayerRow, chain) is None:
                    s.add(LayerRow(chain_id=chain, diff_id=diff_id, size=size))
        except IntegrityError:
            pass
