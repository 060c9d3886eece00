"""Real registries for the tests: Debian's `docker-registry` (CNCF distribution) on 127.0.0.1.

Three flavours, each a real registry process with its own temp storage and config:
- open: no authentication;
- htpasswd: Basic auth against a bcrypt htpasswd file (made with `htpasswd -B`);
- token: the registry's token realm, with a small token server in this process
  that checks Basic credentials and signs RS256 JWTs with a key whose
  certificate the registry trusts (`rootcertbundle`). The registry verifies
  every token itself, so the Bearer flow is exercised end to end.

Also: builders for test images as OCI layouts (gzip, zstd or plain layers,
single images or multi-platform indexes) pushed with `skopeo`, independently
of Berth, and helpers that corrupt the registry's storage on purpose (a blob
whose bytes no longer match its digest, a manifest the registry would never
accept through its API).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

REGISTRY_BIN = "/usr/bin/docker-registry"
SERVICE = "berth-test-registry"
ISSUER = "berth-test-issuer"
USERS = {"alice": "wonderland-pw"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---- token server ---------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(cert: Path) -> str:
    """The key id distribution computes for a trusted key: base32(sha256(SPKI DER)[:30]) in 4-char groups."""
    pem = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", str(cert)], capture_output=True,
                         check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pem, capture_output=True,
                         check=True).stdout
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


class TokenServer:
    """Docker's token protocol: GET /token?service=…&scope=… with optional Basic credentials."""

    def __init__(self, base: Path, users: dict[str, str]) -> None:
        self.key = base / "token.key"
        self.cert = base / "token.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "2", "-subj", "/CN=berth-test-token"],
                       capture_output=True, check=True)
        self.kid = libtrust_key_id(self.cert)
        self.users = users
        self.requests: list[dict[str, object]] = []  # what clients asked for (never the password)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def sign(self, claims: dict[str, object]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing_input.encode(),
                             capture_output=True, check=True).stdout
        return f"{signing_input}.{_b64url(sig)}"

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        q = parse_qs(urlsplit(req.path).query)
        user = ""
        auth = req.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if self.users.get(user) != password:
                body = json.dumps({"errors": [{"code": "UNAUTHORIZED",
                                               "message": "incorrect username or password"}]}).encode()
                req.send_response(401)
                req.send_header("Content-Type", "application/json")
                req.send_header("Content-Length", str(len(body)))
                req.end_headers()
                req.wfile.write(body)
                return
        access = []
        for scope in q.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            granted = wanted if user else [a for a in wanted if a == "pull"]  # anonymous: pull only
            access.append({"type": kind, "name": name, "actions": granted})
        self.requests.append({"user": user, "scopes": q.get("scope", []), "service": q.get("service", [""])[0]})
        now = int(time.time())
        token = self.sign({"iss": ISSUER, "sub": user, "aud": q.get("service", [SERVICE])[0], "exp": now + 300,
                           "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access})
        body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


# ---- the registry -----------------------------------------------------------------


class Registry:
    """One docker-registry process on 127.0.0.1, stopped by PID in `close()`."""

    def __init__(self, auth: str = "none", users: dict[str, str] | None = None) -> None:
        self.auth = auth
        self.users = dict(users or USERS)
        self.base = Path(tempfile.mkdtemp(prefix=f"berth-registry-{auth}-"))
        self.storage = self.base / "storage"
        self.port = free_port()
        self.token: TokenServer | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:", "  level: error", "  accesslog:", "    disabled: true",
            "storage:", "  filesystem:", f"    rootdirectory: {self.storage}",
            "  delete:", "    enabled: true",
            "  maintenance:", "    uploadpurging:", "      enabled: false",
            "http:", f"  addr: 127.0.0.1:{self.port}", f"  secret: {uuid.uuid4().hex}",
        ]
        if self.auth == "htpasswd":
            htpasswd = self.base / "htpasswd"
            for user, password in self.users.items():
                flags = "-Bbn"
                out = subprocess.run(["htpasswd", flags, user, password], capture_output=True, text=True,
                                     check=True).stdout
                with open(htpasswd, "a") as f:
                    f.write(out.strip() + "\n")
            lines += ["auth:", "  htpasswd:", "    realm: berth-test", f"    path: {htpasswd}"]
        elif self.auth == "token":
            self.token = TokenServer(self.base, self.users)
            lines += ["auth:", "  token:", f"    realm: {self.token.realm}", f"    service: {SERVICE}",
                      f"    issuer: {ISSUER}", f"    rootcertbundle: {self.token.cert}"]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> Registry:
        config = self.base / "config.yml"
        config.write_text(self._config())
        log = open(self.base / "registry.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log()[-2000:]}")
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/v2/")
                status = conn.getresponse().status
                conn.close()
                if status in (200, 401):
                    return self
            time.sleep(0.05)
        raise TimeoutError(f"docker-registry not up after {timeout}s: {self.log()[-2000:]}")

    def log(self) -> str:
        try:
            return (self.base / "registry.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.token is not None:
            self.token.close()
        shutil.rmtree(self.base, ignore_errors=True)

    # ---- storage surgery (the registry's own API would refuse these) -------------

    def _v2(self) -> Path:
        return self.storage / "docker" / "registry" / "v2"

    def blob_data(self, digest: str) -> Path:
        hexpart = digest.split(":", 1)[1]
        return self._v2() / "blobs" / "sha256" / hexpart[:2] / hexpart / "data"

    def corrupt_blob(self, digest: str) -> None:
        """Flip one byte in the middle of a stored blob: same size, different digest."""
        path = self.blob_data(digest)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    def put_raw_manifest(self, repo: str, tag: str, data: bytes) -> str:
        """Store `data` as the manifest of repo:tag, bypassing the API's validation."""
        digest = sha(data)
        hexpart = digest.split(":", 1)[1]
        blob = self.blob_data(digest)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        manifests = self._v2() / "repositories" / repo / "_manifests"
        rev = manifests / "revisions" / "sha256" / hexpart / "link"
        rev.parent.mkdir(parents=True, exist_ok=True)
        rev.write_text(digest)
        for sub in ("current", f"index/sha256/{hexpart}"):
            link = manifests / "tags" / tag / sub / "link"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.write_text(digest)
        return digest


# ---- test images ------------------------------------------------------------------


@dataclass
class TestImage:
    """An image as blobs: what a registry or an OCI layout holds."""

    manifest: bytes
    config: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)
    diff_ids: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return sha(self.manifest)

    @property
    def id(self) -> str:
        return sha(self.config)


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if kind == "zstd":
        return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, capture_output=True, check=True).stdout
    return data


def make_image(layers: list[bytes], *, compression: str = "gzip", arch: str = "amd64", variant: str = "",
               cmd: list[str] | None = None, docker_types: bool = False,
               history: list[dict[str, object]] | None = None) -> TestImage:
    """An image from uncompressed layer tars, as an OCI (or Docker schema 2) manifest."""
    diff_ids = [sha(layer) for layer in layers]
    cfg: dict[str, object] = {
        "architecture": arch, "os": "linux", "created": "2024-01-02T03:04:05Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": cmd or ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history or [{"created": "2024-01-02T03:04:05Z", "created_by": f"layer {i}"}
                               for i in range(len(layers))],
    }
    if variant:
        cfg["variant"] = variant
    config = json.dumps(cfg).encode()
    blobs = {sha(config): config}
    descs = []
    for layer in layers:
        blob = compress(layer, compression)
        blobs[sha(blob)] = blob
        if docker_types:
            mt = "application/vnd.docker.image.rootfs.diff.tar.gzip"
        else:
            mt = "application/vnd.oci.image.layer.v1.tar" + (f"+{compression}" if compression else "")
        descs.append({"mediaType": mt, "digest": sha(blob), "size": len(blob)})
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": ("application/vnd.docker.distribution.manifest.v2+json" if docker_types
                      else "application/vnd.oci.image.manifest.v1+json"),
        "config": {"mediaType": ("application/vnd.docker.container.image.v1+json" if docker_types
                                 else "application/vnd.oci.image.config.v1+json"),
                   "digest": sha(config), "size": len(config)},
        "layers": descs,
    }, indent=3).encode()
    return TestImage(manifest, config, blobs, diff_ids)


def make_index(images: list[tuple[TestImage, dict[str, str]]], docker_types: bool = False) -> bytes:
    mt_manifest = ("application/vnd.docker.distribution.manifest.v2+json" if docker_types
                   else "application/vnd.oci.image.manifest.v1+json")
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": ("application/vnd.docker.distribution.manifest.list.v2+json" if docker_types
                      else "application/vnd.oci.image.index.v1+json"),
        "manifests": [{"mediaType": mt_manifest, "digest": img.digest, "size": len(img.manifest),
                       "platform": plat} for img, plat in images],
    }).encode()


def write_layout(path: Path, top: bytes, blobs: dict[str, bytes], tag: str = "latest") -> Path:
    """An OCI image layout directory whose index.json points at `top` (a manifest or an index)."""
    (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    for digest, data in {**blobs, sha(top): top}.items():
        (path / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
    mt = json.loads(top).get("mediaType") or "application/vnd.oci.image.manifest.v1+json"
    (path / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": mt, "digest": sha(top), "size": len(top),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return path


def skopeo_push(layout: Path, dest: str, tag: str = "latest", all_: bool = False,
                creds: str | None = None) -> None:
    """Push an OCI layout to a registry with skopeo, digests preserved (no recompression)."""
    cmd = ["skopeo", "copy", "-q", "--preserve-digests", "--dest-tls-verify=false"]
    if all_:
        cmd.append("--all")
    if creds:
        cmd += ["--dest-creds", creds]
    cmd += [f"oci:{layout}:{tag}", f"docker://{dest}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"skopeo copy failed: {r.stderr.strip()}")


def write_dir(path: Path, image: TestImage) -> Path:
    """skopeo's `dir:` layout: takes Docker schema 2 media types as well as OCI ones."""
    path.mkdir(parents=True)
    (path / "version").write_text("Directory Transport Version: 1.1\n")
    (path / "manifest.json").write_bytes(image.manifest)
    for digest, data in image.blobs.items():
        (path / digest.split(":", 1)[1]).write_bytes(data)
    return path


def push_image(tmp: Path, dest: str, image: TestImage, creds: str | None = None) -> str:
    """Push with skopeo, digests preserved: the registry holds exactly these bytes."""
    src = write_dir(tmp / f"dir-{uuid.uuid4().hex[:8]}", image)
    cmd = ["skopeo", "copy", "-q", "--preserve-digests", "--dest-tls-verify=false"]
    if creds:
        cmd += ["--dest-creds", creds]
    r = subprocess.run([*cmd, f"dir:{src}", f"docker://{dest}"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"skopeo copy failed: {r.stderr.strip()}")
    return image.digest


def push_index(tmp: Path, dest: str, index: bytes, images: list[TestImage]) -> str:
    blobs: dict[str, bytes] = {}
    for img in images:
        blobs.update(img.blobs)
        blobs[img.digest] = img.manifest
    layout = write_layout(tmp / f"layout-{uuid.uuid4().hex[:8]}", index, blobs)
    skopeo_push(layout, dest, all_=True)
    return sha(index)


def skopeo_inspect(target: str, raw: bool = False, creds: str | None = None) -> dict:
    cmd = ["skopeo", "inspect", "--tls-verify=false"]
    if raw:
        cmd.append("--raw")
    if creds:
        cmd += ["--creds", creds]
    r = subprocess.run([*cmd, target], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"skopeo inspect {target} failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


class FaultProxy:
    """A TCP proxy in front of a real registry that misbehaves on blob downloads.

    `cuts` blob GETs are cut off after `cut_after` response bytes (the
    connection simply closes, as when a registry or network fails mid-blob);
    `rate` (bytes/s) slows every blob download so a test can act mid-pull.
    Everything else passes through unchanged.
    """

    def __init__(self, upstream_port: int, *, cut_after: int = 0, cuts: int = 0, rate: int = 0) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.cuts = cuts
        self.rate = rate
        self.blob_gets = 0
        self.ranges: list[str] = []
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                more = client.recv(65536)
                if not more:
                    return
                head += more
            first = head.split(b"\r\n", 1)[0].decode(errors="replace")
            is_blob = first.startswith("GET ") and "/blobs/sha256:" in first
            if is_blob:
                with self._lock:
                    self.blob_gets += 1
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"range:"):
                            self.ranges.append(line.decode().split(":", 1)[1].strip())
            upstream.sendall(head)
            threading.Thread(target=self._pump_up, args=(client, upstream), daemon=True).start()
            sent = 0
            start = time.monotonic()
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                if is_blob and self.cuts > 0 and sent + len(data) >= self.cut_after:
                    with self._lock:  # only responses that reach cut_after bytes are cut
                        cut, self.cuts = self.cuts > 0, self.cuts - 1
                    if cut:
                        client.sendall(data[: max(0, self.cut_after - sent)])
                        return
                client.sendall(data)
                sent += len(data)
                if is_blob and self.rate:
                    ahead = sent / self.rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()
            upstream.close()

    @staticmethod
    def _pump_up(client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                upstream.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the thread
        self._sock.close()
        self._thread.join(5)
