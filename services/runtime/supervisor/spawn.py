"""Forking a container (or an exec into one): the code that runs in the supervisor's children.

Child A (in the supervisor's namespaces) starts a new session, joins the container's
cgroups, unshares the namespaces and forks B, the pid 1 of the new pid namespace; it
sends B's host pid back and exits, so B is reparented to the subreaper supervisor.
B builds the root filesystem, drops privileges and execs the command; anything that
fails before exec is written to a CLOEXEC status pipe (EOF there means exec worked).

An exec (``exec_pid`` set) takes the same path, except that A joins the running
container's cgroups and *enters* its namespaces with setns (the pid namespace applies
to B), and B skips the root filesystem: entering the mount namespace already made the
container's root our root. With ``tty`` B opens a pty from the container's devpts,
makes it its controlling terminal and sends the master back over a socketpair.

Confinement (``services/runtime/security/``): the seccomp filter is compiled here, in the
supervisor, before forking (cached per profile); a user namespace with the container's
uid/gid map is made here too. B builds the root filesystem as real root (an idmapped
overlay when the container has a user namespace), then joins that namespace, drops
capabilities to the container's set, sets no_new_privs, applies AppArmor where enabled,
and installs the seccomp filter as the very last step before execve. An exec gets the
container's capability set and filter, and joins its user namespace.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import time
from dataclasses import asdict, dataclass, field

from services.common.mount import Mount
from services.runtime import capabilities, namespaces, rootfs, tty, users
from services.runtime import mounts as container_mounts
from services.runtime.network import join
from services.runtime.security import apparmor, devices, seccomp, userns
from services.runtime.syscalls import MS_PRIVATE, MS_REC, PR_SET_NO_NEW_PRIVS, Syscalls

SETUP_FAILED_EXIT = 128
SPAWN_TIMEOUT = 30.0


@dataclass
class SpawnConfig:
    id: str
    args: list[str]
    env: list[str]
    rootfs: dict
    rootfs_dir: str
    state_dir: str
    log_path: str
    cwd: str = "/"
    user: str = ""
    hostname: str = ""
    files: dict[str, str] = field(default_factory=dict)
    cgroup_procs: list[str] = field(default_factory=list)
    open_stdin: bool = False
    tty: bool = False
    tty_rows: int = 0
    tty_cols: int = 0
    exec_pid: int = 0          # exec: host pid of the container's init, whose namespaces we enter
    container: str = ""        # exec: the container's id (``id`` is the exec's own)
    log_max_size: int = 0      # json-file rotation; 0: never rotate
    log_max_files: int = 1
    # Networks and storage (issue 5): see services/runtime/mounts.py and network/join.py.
    mounts: list[dict] = field(default_factory=list)
    read_only: bool = False
    netns: str = ""            # a prepared network namespace to join (bridge/user networks)
    host_network: bool = False  # --network host: keep the host's network namespace
    # Confinement (issue 7): see services/runtime/security/policy.py, which fills these in.
    caps: list[str] | None = None  # the capabilities kept; None: Docker's default set
    seccomp: str = seccomp.DEFAULT  # "default", "unconfined" or a profile's JSON
    privileged: bool = False
    devices: list[dict] = field(default_factory=list)
    apparmor: str = ""             # a profile to change to at exec ("": none)
    no_new_privs: bool = True
    userns_base: int = 0           # first host uid/gid of the container's range; 0: no user namespace
    userns_size: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SpawnConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class Confinement:
    """What the supervisor prepared before forking, for B to apply."""

    bpf: bytes = b""           # the compiled seccomp filter; b"": unconfined
    userns_fd: int = -1        # the container's user namespace (new containers only)


@dataclass
class Spawned:
    pid: int = 0
    stdout: int = -1
    stderr: int = -1
    stdin: int = -1            # our write end of the container's stdin, when open_stdin
    master: int = -1           # the pty master, with tty (then stdout is a dup of it, stderr -1)
    error: str = ""            # set when the container could not be started
    exit_code: int = 0         # with error: 126/127 (exec) or 128 (setup)


def exec_error(arg0: str, err: OSError) -> tuple[int, str]:
    """Docker's exit code and message for a failed execve."""
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        if "/" in arg0:
            return 127, f'exec: "{arg0}": stat {arg0}: no such file or directory'
        return 127, f'exec: "{arg0}": executable file not found in $PATH'
    if err.errno in (errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR):
        return 126, f'exec: "{arg0}": permission denied'
    return 126, f'exec: "{arg0}": {os.strerror(err.errno or 0)}'


def env_dict(env: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in env:
        k, _, v = item.partition("=")
        if k:
            out[k] = v
    return out


def reset_signals(sys: Syscalls) -> None:
    """Default dispositions for every signal (Python ignores SIGPIPE) and an empty mask."""
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            sys.default_signal(sig)  # 32 and 33: only the raw syscall reaches them
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _read_all(fd: int, deadline: float) -> bytes:
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("container setup timed out")
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return data
        data += chunk


def _fail(fd: int, code: int, message: str) -> None:
    try:
        os.write(fd, json.dumps({"exit_code": code, "error": message}).encode())
    finally:
        os._exit(code)


def build_rootfs(sys: Syscalls, cfg: SpawnConfig, userns_fd: int = -1) -> None:
    """``rootfs.setup``'s sequence with the confinement steps woven in (keep the two in step).

    With a user namespace the overlay is mounted over idmapped views of its layers, and
    the whole tree is built with the container root's host ids as file system ids, so
    everything made here belongs to container root and the layers store it as 0.
    """
    root = cfg.rootfs_dir
    spec = Mount.from_dict(cfg.rootfs)
    if userns_fd >= 0:
        sys.mount(None, "/", None, MS_REC | MS_PRIVATE)
        userns.idmap_layers(list(spec.lowerdirs), spec.upperdir, spec.workdir, userns_fd)
        userns.act_as(cfg.userns_base, cfg.userns_base)
    rootfs.mount_root(sys, spec, root)
    rootfs.mount_kernel_fs(sys, root)
    if cfg.privileged:
        devices.create_host_devices(root)
    devices.create(root, cfg.devices)
    rootfs.bind_files(sys, root, cfg.files)
    if cfg.mounts:
        container_mounts.apply(sys, root, cfg.mounts)
    if cfg.read_only:
        container_mounts.make_workdir(root, cfg.cwd)
    if userns_fd >= 0:
        if not cfg.host_network:
            userns.set_net_sysctls(os.path.join(root, "proc"))
        for host_path in cfg.files.values():
            os.chown(host_path, cfg.userns_base, cfg.userns_base)
        for m in cfg.mounts:
            if m.get("type") == "volume":  # a fresh volume belongs to container root, like Docker's
                userns.claim_empty_dir(m.get("source", ""), cfg.userns_base)
    rootfs.pivot(sys, root)
    if not cfg.privileged:
        rootfs.mask_paths(sys)
        rootfs.readonly_paths(sys)
    if cfg.read_only:
        container_mounts.readonly_root(sys)


def _init_b(sys: Syscalls, cfg: SpawnConfig, status_w: int, out_w: int, err_w: int, in_r: int,
            pty_sock: socket.socket | None, conf: Confinement) -> None:
    """pid 1 of the container (or the exec'd process): never returns."""
    step = "setup"
    slave = -1
    try:
        os.umask(0o022)
        if not cfg.exec_pid:
            step = "rootfs"
            build_rootfs(sys, cfg, conf.userns_fd)
            step = "hostname"
            if cfg.hostname:
                sys.sethostname(cfg.hostname)
            step = "loopback"
            sys.link_up("lo")
            if conf.userns_fd >= 0:
                step = "user namespace"
                userns.join(sys, conf.userns_fd)
        if pty_sock is not None:
            step = "tty"
            master, slave = tty.open_pty("/dev/ptmx")
            tty.set_winsize(slave, cfg.tty_rows, cfg.tty_cols)
            tty.send_fd(pty_sock, master)
            os.close(master)
            pty_sock.close()
        step = "user"
        try:
            who = users.resolve(cfg.user, "/")
        except users.UserError as exc:
            _fail(status_w, SETUP_FAILED_EXIT, str(exc))
        env = env_dict(cfg.env)
        env.setdefault("HOME", who.home)
        step = "cwd"
        cwd = cfg.cwd or "/"
        if not cfg.exec_pid:  # an exec into a missing directory fails, like Docker's
            os.makedirs(cwd, exist_ok=True)
        os.chdir(cwd)
        if slave >= 0:
            os.fchown(slave, who.uid, -1)
        step = "capabilities"
        capabilities.restrict(sys, capabilities.DEFAULT if cfg.caps is None else frozenset(cfg.caps))
        step = "setuid"
        os.setgroups(who.groups)
        os.setgid(who.gid)
        os.setuid(who.uid)
        if cfg.no_new_privs:
            sys.prctl(PR_SET_NO_NEW_PRIVS, 1)
        step = "apparmor"
        apparmor.apply(cfg.apparmor)
        step = "stdio"
        if slave >= 0:
            tty.make_controlling(slave)
        else:
            if in_r < 0:
                in_r = os.open("/dev/null", os.O_RDONLY)
            os.dup2(in_r, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
        reset_signals(sys)
        if conf.bpf:
            step = "seccomp"
            seccomp.install(sys, conf.bpf)  # last: from here on only execve (and a failure report)
    except BaseException as exc:  # noqa: BLE001 - report, never return into the supervisor
        _fail(status_w, SETUP_FAILED_EXIT, f"container init failed at {step}: {exc}")
    try:
        os.execvpe(cfg.args[0], cfg.args, env)
    except OSError as exc:
        code, message = exec_error(cfg.args[0], exc)
        _fail(status_w, code, message)
    except BaseException as exc:  # noqa: BLE001
        _fail(status_w, 126, f'exec: "{cfg.args[0]}": {exc}')
    os._exit(SETUP_FAILED_EXIT)


def _child_a(sys: Syscalls, cfg: SpawnConfig, pid_w: int, status_w: int, out_w: int, err_w: int,
             in_r: int, pty_sock: socket.socket | None, conf: Confinement) -> None:
    """Join cgroups, unshare (or setns), fork the container's pid 1, report its pid: never returns."""
    try:
        reset_signals(sys)
        os.setsid()
        me = str(os.getpid())
        for procs in cfg.cgroup_procs:
            with open(procs, "w") as f:
                f.write(me)
        if cfg.exec_pid:
            user_fd = userns.foreign_userns_fd(cfg.exec_pid)
            namespaces.enter_namespaces_of(sys, cfg.exec_pid)
            if user_fd >= 0:  # last: past it we have no privilege over the other namespaces
                userns.join(sys, user_fd)
        else:
            join.enter_container_namespaces(sys, cfg.netns, cfg.host_network)
        b = os.fork()
        if b == 0:
            os.close(pid_w)
            _init_b(sys, cfg, status_w, out_w, err_w, in_r, pty_sock, conf)
            os._exit(SETUP_FAILED_EXIT)
        os.write(pid_w, json.dumps({"pid": b}).encode())
        os._exit(0)
    except BaseException as exc:  # noqa: BLE001
        try:
            os.write(pid_w, json.dumps({"error": f"container init failed: {exc}"}).encode())
        finally:
            os._exit(1)


def prepare_confinement(sys: Syscalls, cfg: SpawnConfig) -> Confinement:
    """Compile (or fetch from the cache) the seccomp filter; make the user namespace."""
    caps = capabilities.DEFAULT if cfg.caps is None else frozenset(cfg.caps)
    conf = Confinement(bpf=seccomp.bpf_for(cfg.seccomp, caps))
    if cfg.userns_base and not cfg.exec_pid:
        conf.userns_fd = userns.make_userns(sys, cfg.userns_base, cfg.userns_size or userns.SIZE)
    return conf


def spawn(sys: Syscalls, cfg: SpawnConfig) -> Spawned:
    """Start a container; on return its pid 1 has exec'd (or failed, see ``Spawned.error``)."""
    if not cfg.args:
        return Spawned(error="no command specified", exit_code=SETUP_FAILED_EXIT)
    try:
        conf = prepare_confinement(sys, cfg)
    except (seccomp.ProfileError, userns.UsernsError, OSError) as exc:
        return Spawned(error=f"cannot confine the container: {exc}", exit_code=SETUP_FAILED_EXIT)
    try:
        return _spawn(sys, cfg, conf)
    finally:
        if conf.userns_fd >= 0:
            os.close(conf.userns_fd)


def _spawn(sys: Syscalls, cfg: SpawnConfig, conf: Confinement) -> Spawned:
    if cfg.tty:
        out_r = out_w = err_r = err_w = in_r = in_w = -1
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe() if cfg.open_stdin else (-1, -1)
        parent_sock = child_sock = None
    pid_r, pid_w = os.pipe()
    status_r, status_w = os.pipe()
    a = os.fork()
    if a == 0:
        try:
            for fd in (out_r, err_r, pid_r, status_r, in_w):
                if fd >= 0:
                    os.close(fd)
            if parent_sock is not None:
                parent_sock.close()
            _child_a(sys, cfg, pid_w, status_w, out_w, err_w, in_r, child_sock, conf)
        finally:
            os._exit(1)
    for fd in (out_w, err_w, pid_w, status_w, in_r):
        if fd >= 0:
            os.close(fd)
    if child_sock is not None:
        child_sock.close()
    result = Spawned(stdout=out_r, stderr=err_r, stdin=in_w)
    deadline = time.monotonic() + SPAWN_TIMEOUT
    try:
        raw = _read_all(pid_r, deadline)
        os.waitpid(a, 0)
        msg = json.loads(raw) if raw else {"error": "container init exited before starting the container"}
        if "pid" not in msg:
            result.error, result.exit_code = msg.get("error", "container init failed"), SETUP_FAILED_EXIT
            return result
        result.pid = msg["pid"]
        try:
            if parent_sock is not None:
                _receive_master(parent_sock, result, cfg.open_stdin, deadline)
            raw = _read_all(status_r, deadline)
        except TimeoutError:
            os.kill(result.pid, signal.SIGKILL)
            result.error, result.exit_code = "container setup timed out", SETUP_FAILED_EXIT
            return result
        if raw:
            msg = json.loads(raw)
            result.error, result.exit_code = msg.get("error", "container init failed"), msg.get("exit_code", 128)
        return result
    finally:
        os.close(pid_r)
        os.close(status_r)
        if parent_sock is not None:
            parent_sock.close()
        for fd in (result.stdout, result.stderr, result.stdin):
            if fd >= 0:
                os.set_blocking(fd, False)


def _receive_master(sock: socket.socket, result: Spawned, open_stdin: bool, deadline: float) -> None:
    """The pty master from B (none if B failed before opening it: the status pipe says why).

    Output is read from one fd and stdin written to a dup of it, so the supervisor can
    watch the two directions separately in its selector.
    """
    left = max(0.0, deadline - time.monotonic())
    r, _, _ = select.select([sock], [], [], left)
    if not r:
        raise TimeoutError("container setup timed out")
    master = tty.recv_fd(sock)
    if master < 0:
        return
    os.set_inheritable(master, False)
    result.master = master
    result.stdout = os.dup(master)
    if open_stdin:
        result.stdin = os.dup(master)
