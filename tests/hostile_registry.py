"""A registry that misbehaves the ways a real one never does, for the hostile-input tests.

A real HTTP server (a socket on a loopback address, its own threads) that speaks just enough
of the distribution API (`/v2/`, manifests, blobs, optional Basic auth) to serve what a test
puts in it, and, on request: answers a manifest or blob never (`stall`), goes silent
mid-blob (`stall_after`), streams a blob forever without a length (`forever`), redirects a
blob elsewhere (`redirects`), or lies in its `Docker-Content-Digest` header. Every request
is recorded with its headers, so a test can see what Berth sent where (credentials
included). `docker-registry` validates what it stores and serves, so it cannot play this
part; the FaultProxy in tests/registry.py covers the faults a proxy can make.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.registry import TestImage, sha


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


class HostileRegistry:
    """One server on `bind` (any 127.x address), stopped by `close()`."""

    def __init__(self, bind: str = "127.0.0.1", basic_auth: tuple[str, str] | None = None) -> None:
        self.manifests: dict[str, tuple[bytes, str]] = {}  # "repo:ref" -> (body, Content-Type)
        self.blobs: dict[str, bytes] = {}
        self.digest_header: dict[str, str] = {}  # "repo:ref" -> the Docker-Content-Digest to claim
        self.stall: set[str] = set()  # path substrings that are never answered
        self.stall_after: dict[str, int] = {}  # blob digest -> bytes sent before going silent
        self.forever: set[str] = set()  # blob digests sent whole, then zeros without end
        self.redirects: dict[str, str] = {}  # blob digest -> Location
        self.requests: list[Seen] = []
        self.closing = threading.Event()
        self._auth = ("Basic " + base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
                      if basic_auth else "")
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                registry._handle(self)

            def do_HEAD(self) -> None:  # noqa: N802
                registry._handle(self)

        self.httpd = ThreadingHTTPServer((bind, 0), Handler)
        self.httpd.daemon_threads = True
        self.bind = bind
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"{self.bind}:{self.port}"

    def put_image(self, repo: str, tag: str, image: TestImage, manifest: bytes | None = None,
                  content_type: str = "application/vnd.oci.image.manifest.v1+json") -> str:
        """Serve `image` (or another manifest body) as repo:tag and repo@digest."""
        body = image.manifest if manifest is None else manifest
        self.manifests[f"{repo}:{tag}"] = (body, content_type)
        self.manifests[f"{repo}:{sha(body)}"] = (body, content_type)
        self.blobs.update(image.blobs)
        return sha(body)

    def seen(self, part: str) -> list[Seen]:
        return [r for r in self.requests if part in r.path]

    # ---- serving ---------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        self.requests.append(Seen(req.command, req.path, dict(req.headers.items())))
        try:
            if any(part in req.path for part in self.stall):
                self.closing.wait()  # never answers (until the test ends)
                return
            if self._auth and req.headers.get("Authorization") != self._auth:
                self._send(req, 401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                           {"WWW-Authenticate": 'Basic realm="hostile"'})
                return
            if req.path == "/v2/":
                self._send(req, 200, b"{}")
                return
            repo, kind, ident = self._route(req.path)
            if kind == "manifests" and f"{repo}:{ident}" in self.manifests:
                body, ctype = self.manifests[f"{repo}:{ident}"]
                claimed = self.digest_header.get(f"{repo}:{ident}", sha(body))
                self._send(req, 200, body, {"Content-Type": ctype, "Docker-Content-Digest": claimed})
            elif kind == "blobs" and ident in self.redirects:
                self._send(req, 307, b"", {"Location": self.redirects[ident]})
            elif kind == "blobs" and ident in self.forever:
                self._stream_forever(req, self.blobs.get(ident, b""))
            elif kind == "blobs" and ident in self.stall_after:
                data = self.blobs[ident]
                req.send_response(200)
                req.send_header("Content-Length", str(len(data)))
                req.end_headers()
                req.wfile.write(data[: self.stall_after[ident]])
                req.wfile.flush()
                self.closing.wait()
            elif kind == "blobs" and ident in self.blobs:
                self._send(req, 200, self.blobs[ident], {"Content-Type": "application/octet-stream"})
            else:
                self._send(req, 404, json.dumps({"errors": [{"code": f"{kind.upper()}_UNKNOWN",
                                                             "message": "unknown"}]}).encode())
        except OSError:
            pass  # the client went away, as it should when it gives up

    @staticmethod
    def _route(path: str) -> tuple[str, str, str]:
        rest = path.split("?", 1)[0].removeprefix("/v2/")
        for kind in ("manifests", "blobs"):
            marker = f"/{kind}/"
            if marker in rest:
                repo, _, ident = rest.rpartition(marker)
                return repo, kind, ident
        return "", "", ""

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        req.send_response(status)
        for k, v in (headers or {}).items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(body)

    def _stream_forever(self, req: BaseHTTPRequestHandler, data: bytes) -> None:
        req.send_response(200)
        req.send_header("Content-Type", "application/octet-stream")
        req.end_headers()  # no Content-Length: the body ends when the connection does (never)
        req.wfile.write(data)
        zeros = bytes(64 << 10)
        while not self.closing.is_set():
            req.wfile.write(zeros)

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        with contextlib.suppress(OSError):
            self.httpd.server_close()
        self.thread.join(5)
