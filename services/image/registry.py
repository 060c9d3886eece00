"""A client for the OCI Distribution API (Docker Registry HTTP API v2), stdlib only.

`http.client` is enough: the protocol is a handful of GET/HEAD/POST/PATCH/PUT
requests, and streaming a blob straight from the socket into the layer
unpacker is what makes pulls fast. What this module adds on top:

- authentication as registries challenge for it (`WWW-Authenticate`): the
  Bearer token flow (anonymous or with Basic credentials, tokens cached per
  scope) and plain Basic;
- Docker-shaped one-line errors: connection problems name the URL like
  Docker's `Get "http://…": dial tcp …: connection refused`, registry errors
  carry the registry's own code and message, and credentials never appear in
  any message or log line;
- a blob reader that resumes with a `Range` request when a connection breaks
  mid-blob, so one dropped connection does not fail a large pull.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import socket
import ssl
import threading
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import grpc

from services.common.errors import BerthError, FailedPrecondition, NotFound
from services.image.reference import DEFAULT_DOMAIN

log = logging.getLogger("berth.image.registry")

DOCKER_HUB_ENDPOINT = "https://registry-1.docker.io"
USER_AGENT = "berth/0.1"
TIMEOUT = 60.0
MAX_REDIRECTS = 5
RESUME_ATTEMPTS = 3
ERROR_BODY_LIMIT = 64 << 10


class RegistryError(BerthError):
    """The registry could not be reached or answered with an error (not a Berth fault)."""

    code = grpc.StatusCode.UNKNOWN


class Unauthorized(BerthError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Cancelled(BerthError):
    """The operation was cancelled (the client went away, or a sibling download failed)."""

    code = grpc.StatusCode.CANCELLED


@dataclass(frozen=True)
class Credentials:
    """What a client sent for this registry; `repr` never shows secrets."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    def __bool__(self) -> bool:
        return bool(self.username or self.identity_token or self.registry_token)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Settings:
    """Registry settings: the default registry and its mirrors, registries reached over plain HTTP.

    Read from the environment (`BERTH_DEFAULT_REGISTRY`, and comma-separated
    `BERTH_REGISTRY_MIRRORS`, `BERTH_INSECURE_REGISTRIES`) or the keys
    `default_registry`, `registry_mirrors`, `insecure_registries` of the Berth
    config file; loopback registries are always plain HTTP, as in Docker.

    The default registry is where names without a registry (`busybox`, i.e.
    `docker.io/library/busybox`) are fetched from and pushed to: Docker Hub
    unless set (a host[:port] or URL), say an in-house registry holding the same
    repositories. Names keep their `docker.io/` form, as with Docker's mirrors.
    Mirrors (host[:port] or URL) are tried first for those pulls, in order; a
    mirror that fails or lacks the image falls back to the next, then to the
    default registry. Pushes never go to a mirror.
    """

    mirrors: tuple[str, ...] = ()
    insecure: tuple[str, ...] = ()
    # When set, the only registry hosts Berth may contact (`allowed_registries`): an
    # operator's guard, and how the test suite makes sure no pull leaves the machine.
    allowed: tuple[str, ...] = ()
    default_registry: str = ""
    # Seconds a registry may stay silent (connecting, or between two reads) before a pull
    # gives up on it: `BERTH_REGISTRY_TIMEOUT` or `registry_timeout`.
    timeout: float = TIMEOUT

    @classmethod
    def load(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        try:
            with open(env.get("BERTH_CONFIG", "/etc/berth/berth.toml"), "rb") as f:
                values = tomllib.load(f)
        except (FileNotFoundError, tomllib.TOMLDecodeError):
            pass

        def items(key: str) -> tuple[str, ...]:
            raw = env.get("BERTH_" + key.upper())
            if raw is None:
                val = values.get(key, [])
                raw = ",".join(val) if isinstance(val, list) else str(val)
            return tuple(x.strip().rstrip("/") for x in raw.split(",") if x.strip())

        default = env.get("BERTH_DEFAULT_REGISTRY")
        if default is None:
            default = str(values.get("default_registry", ""))
        raw_timeout = env.get("BERTH_REGISTRY_TIMEOUT") or values.get("registry_timeout") or TIMEOUT
        try:
            timeout = float(raw_timeout)
        except (TypeError, ValueError):
            timeout = 0.0
        if not 0 < timeout < 86400:
            raise FailedPrecondition(f"invalid registry_timeout {raw_timeout!r}: expected seconds, more than 0")
        return cls(mirrors=items("registry_mirrors"), insecure=items("insecure_registries"),
                   allowed=items("allowed_registries"), default_registry=default.strip().rstrip("/"),
                   timeout=timeout)

    def _url(self, entry: str) -> str:
        """A configured registry as a base URL: `host:port` gets the scheme `scheme_for` picks."""
        return entry if "://" in entry else f"{self.scheme_for(entry)}://{entry}"

    def scheme_for(self, host: str) -> str:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]")
        if name in ("localhost", "::1") or name.startswith("127.") or host in self.insecure or name in self.insecure:
            return "http"
        return "https"

    def endpoints(self, domain: str, for_push: bool = False) -> list[str]:
        """Base URLs to try, in order: mirrors first for Docker Hub pulls."""
        if domain == DEFAULT_DOMAIN:
            upstream = self._url(self.default_registry) if self.default_registry else DOCKER_HUB_ENDPOINT
            urls = ([] if for_push else [self._url(m) for m in self.mirrors]) + [upstream]
        else:
            urls = [f"{self.scheme_for(domain)}://{domain}"]
        if self.allowed:
            urls = [u for u in urls if self.is_allowed(urllib.parse.urlsplit(u).netloc)]
            if not urls:
                raise FailedPrecondition(f"registry {domain} is not in allowed_registries "
                                         f"({', '.join(self.allowed)})")
        return urls

    def is_allowed(self, host: str) -> bool:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return not self.allowed or host in self.allowed or name.strip("[]") in self.allowed


@dataclass
class Challenge:
    scheme: str
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """`Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            val = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                val.append(rest[i])
                i += 1
            i += 1
            params[key] = "".join(val)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return Challenge(scheme.lower(), params)


def registry_message(status: int, body: bytes) -> str:
    """The registry's `{"errors":[{code,message}]}` as Docker prints it, else the HTTP status."""
    try:
        doc = json.loads(body)
        errs = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errs, list) and errs:
            parts = []
            for e in errs[:3]:
                if isinstance(e, dict):
                    code = str(e.get("code") or "").lower().replace("_", " ")
                    msg = str(e.get("message") or "").replace("\n", " ")
                    parts.append(f"{code}: {msg}" if code and msg else code or msg)
            if parts:
                return "; ".join(parts)
    except (ValueError, UnicodeDecodeError):
        pass
    return f"received unexpected HTTP status: {status} {http.client.responses.get(status, '')}".rstrip()


def _connect_error(method: str, url: str, exc: BaseException) -> RegistryError:
    """One line naming the URL and the cause, like Docker's Go errors."""
    host = urllib.parse.urlsplit(url).netloc
    verb = method.capitalize()
    if isinstance(exc, socket.gaierror):
        name = host.rsplit(":", 1)[0]
        nohost = exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME))
        why = f"dial tcp: lookup {name}: " + ("no such host" if nohost else (exc.strerror or str(exc)).lower())
    elif isinstance(exc, ConnectionRefusedError):
        why = f"dial tcp {host}: connect: connection refused"
    elif isinstance(exc, TimeoutError | socket.timeout):
        why = f"dial tcp {host}: i/o timeout"
    elif isinstance(exc, ssl.SSLError):
        why = f"tls: {exc.reason or exc}"
    else:
        why = str(exc) or type(exc).__name__
    return RegistryError(f'{verb} "{url}": {why}')


class Response:
    """An open HTTP response; the caller reads (or drains) and closes it."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, url: str) -> None:
        self._conn = conn
        self.raw = resp
        self.status = resp.status
        self.url = url

    def header(self, name: str, default: str = "") -> str:
        return self.raw.getheader(name, default) or default

    def read(self, n: int = -1) -> bytes:
        return self.raw.read() if n is None or n < 0 else self.raw.read(n)

    def read_limited(self, limit: int) -> bytes:
        try:
            data = self.raw.read(limit + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise _read_error(self.url, exc, self._conn.timeout) from None
        if len(data) > limit:
            raise RegistryError(f"response from {self.url} is larger than {limit} bytes")
        return data

    def close(self) -> None:
        self.raw.close()
        self._conn.close()


def _read_error(url: str, exc: BaseException, timeout: float | None) -> RegistryError:
    """A registry that went silent or dropped the connection after it answered."""
    host = urllib.parse.urlsplit(url).netloc
    if isinstance(exc, TimeoutError | socket.timeout):
        return RegistryError(f'Get "{url}": read tcp {host}: i/o timeout (no data for {timeout:g}s; '
                             "see registry_timeout)")
    return RegistryError(f'Get "{url}": read tcp {host}: {exc or type(exc).__name__}')


def _open(method: str, url: str, headers: dict[str, str], body: bytes | BinaryIO | None,
          timeout: float) -> Response:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise RegistryError(f'{method.capitalize()} "{url}": unsupported protocol scheme {parts.scheme!r}')
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.netloc, timeout=timeout)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        conn.request(method, target, body=body, headers={"User-Agent": USER_AGENT, **headers})
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise _connect_error(method, url, exc) from None
    try:
        resp = conn.getresponse()
    except TimeoutError:
        conn.close()
        raise RegistryError(f'{method.capitalize()} "{url}": {parts.netloc} did not answer within {timeout:g}s '
                            "(see registry_timeout)") from None
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise _connect_error(method, url, exc) from None
    return Response(conn, resp, url)


class RegistryClient:
    """Requests to one registry (one base URL), authenticated as it asks.

    Thread-safe: concurrent layer downloads share the token cache.
    """

    def __init__(self, base_url: str, creds: Credentials | None = None, timeout: float | None = None,
                 settings: Settings | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.creds = creds or Credentials()
        self.settings = settings or Settings.load()
        self.timeout = timeout or self.settings.timeout
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}  # scope key -> "Bearer …"
        self._basic = False  # the registry asked for Basic auth
        self.challenge: Challenge | None = None

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.base).netloc

    def url(self, path: str) -> str:
        return self.base + path

    # ---- authentication -----------------------------------------------------

    def _auth_header(self, scopes: tuple[str, ...]) -> str | None:
        if self.creds.registry_token:
            return "Bearer " + self.creds.registry_token
        with self._lock:
            token = self._tokens.get(" ".join(scopes))
            if token:
                return token
            if self._basic and self.creds:
                return self.creds.basic()
        return None

    def authenticate(self, header: str, scopes: tuple[str, ...]) -> None:
        """Answer a 401 challenge: fetch a bearer token, or switch to Basic."""
        challenge = parse_challenge(header)
        if challenge is None:
            raise Unauthorized("unauthorized: the registry sent no usable authentication challenge")
        self.challenge = challenge
        if challenge.scheme == "basic":
            if not self.creds:
                raise Unauthorized("unauthorized: authentication required")
            with self._lock:
                self._basic = True
            return
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise Unauthorized(f"unauthorized: unsupported authentication scheme {challenge.scheme!r}")
        token = self._fetch_token(challenge, scopes)
        with self._lock:
            self._tokens[" ".join(scopes)] = "Bearer " + token

    def _fetch_token(self, challenge: Challenge, scopes: tuple[str, ...]) -> str:
        realm = challenge.params["realm"]
        query: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            query.append(("service", challenge.params["service"]))
        query.extend(("scope", s) for s in scopes)
        if self.creds.username and not self.creds.identity_token:
            query.append(("account", self.creds.username))
        headers = {}
        if self.creds.identity_token:
            # Docker's OAuth2 refresh-token grant.
            form = urllib.parse.urlencode([
                ("grant_type", "refresh_token"), ("refresh_token", self.creds.identity_token),
                ("service", challenge.params.get("service", "")), ("client_id", "berth"),
                *(("scope", s) for s in scopes)]).encode()
            resp = _open("POST", realm, {"Content-Type": "application/x-www-form-urlencoded"}, form, self.timeout)
        else:
            if self.creds.username:
                headers["Authorization"] = self.creds.basic()
            url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
            resp = _open("GET", url, headers, None, self.timeout)
        try:
            body = resp.read_limited(ERROR_BODY_LIMIT)
        except (OSError, http.client.HTTPException) as exc:
            raise _connect_error("GET", realm, exc) from None
        finally:
            resp.close()
        if resp.status in (401, 403):
            msg = registry_message(resp.status, body)
            if msg.startswith("received unexpected"):
                msg = "unauthorized: incorrect username or password"
            raise Unauthorized(msg)
        if resp.status != 200:
            raise RegistryError(f'Get "{realm}": {registry_message(resp.status, body)}')
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token server {realm} sent no token")
        return token

    # ---- requests -----------------------------------------------------------

    def request(self, method: str, path_or_url: str, *, scopes: Iterable[str] = (),
                headers: dict[str, str] | None = None,
                body: bytes | Callable[[], BinaryIO] | None = None,
                follow: bool = True) -> Response:
        """Send a request, answering one auth challenge and following redirects.

        `body` is bytes, or a callable that opens a fresh stream (a request may be
        sent twice when the registry first asks for credentials).
        """
        scope_key = tuple(scopes)
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        for attempt in range(2):
            hdrs = dict(headers or {})
            auth = self._auth_header(scope_key)
            if auth:
                hdrs["Authorization"] = auth
            payload = body() if callable(body) else body
            try:
                resp = _open(method, url, hdrs, payload, self.timeout)
            finally:
                if payload is not None and not isinstance(payload, bytes):
                    payload.close()
            if resp.status == 401 and attempt == 0 and not self.creds.registry_token:
                challenge = resp.header("WWW-Authenticate")
                resp.close()
                self.authenticate(challenge, scope_key)
                continue
            break
        redirects = 0
        while follow and resp.status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD"):
            location = resp.header("Location")
            resp.close()
            redirects += 1
            if not location or redirects > MAX_REDIRECTS:
                raise RegistryError(f'{method.capitalize()} "{url}": too many redirects')
            nxt = urllib.parse.urljoin(url, location)
            target = urllib.parse.urlsplit(nxt)
            # Blobs may live on another host (a CDN), but an operator's allow-list holds there too.
            why = ("not an http(s) URL" if target.scheme not in ("http", "https")
                   else "" if self.settings.is_allowed(target.netloc)
                   else f"{target.netloc} is not in allowed_registries ({', '.join(self.settings.allowed)})")
            if why:
                raise FailedPrecondition(f'{method.capitalize()} "{url}": refusing to follow the redirect to '
                                         f"{nxt.split('?', 1)[0]}: {why}")
            same = target.netloc == urllib.parse.urlsplit(url).netloc
            hdrs = {k: v for k, v in (headers or {}).items()}
            auth = self._auth_header(scope_key)
            if auth and same:
                hdrs["Authorization"] = auth  # never leak registry credentials to a CDN
            url = nxt
            resp = _open(method, url, hdrs, None, self.timeout)
        return resp

    def error(self, resp: Response, method: str = "GET") -> BerthError:
        """Turn a non-success response into one line, and close it."""
        try:
            body = resp.read_limited(ERROR_BODY_LIMIT) if method != "HEAD" else b""
        except (OSError, http.client.HTTPException, RegistryError):
            body = b""
        finally:
            resp.close()
        msg = registry_message(resp.status, body)
        if resp.status in (401, 403):
            return Unauthorized(msg if not msg.startswith("received") else "unauthorized: authentication required")
        if resp.status == 404:
            return NotFound(msg)
        return RegistryError(f'{method.capitalize()} "{resp.url}": {msg}')

    def ping(self) -> None:
        """GET /v2/: checks reachability and, with credentials, that they are accepted."""
        resp = self.request("GET", "/v2/")
        if resp.status == 200:
            resp.read_limited(ERROR_BODY_LIMIT)
            resp.close()
            return
        raise self.error(resp)


class BlobReader:
    """A blob's bytes from the registry, resuming with `Range` when the connection breaks.

    `on_bytes` sees every chunk (progress); `cancel` aborts between reads. The
    caller verifies the digest: this reader only guarantees the length.
    """

    def __init__(self, client: RegistryClient, repo: str, digest: str, size: int, *,
                 scopes: tuple[str, ...], on_bytes: Callable[[int], None] | None = None,
                 cancel: threading.Event | None = None, urls: list[str] | None = None) -> None:
        self.client = client
        self.repo = repo
        self.digest = digest
        self.size = size
        self.scopes = scopes
        self.on_bytes = on_bytes
        self.cancel = cancel
        self.urls = [u for u in urls or [] if u.startswith(("http://", "https://"))
                     and client.settings.is_allowed(urllib.parse.urlsplit(u).netloc)]
        self.offset = 0
        self._resp: Response | None = None
        self._attempts = 0
        self._resp = self._open(0)

    def _open(self, start: int) -> Response:
        headers = {"Range": f"bytes={start}-"} if start else {}
        # Foreign (non-distributable) layers may name where to fetch them; the
        # registry is the fallback, as the image spec allows.
        for url in self.urls:
            try:
                resp = _open("GET", url, headers, None, self.client.timeout)
            except RegistryError:
                continue
            if resp.status in (200, 206):
                return self._check_range(resp, start)
            resp.close()
        resp = self.client.request("GET", f"/v2/{self.repo}/blobs/{self.digest}", scopes=self.scopes,
                                   headers=headers)
        if resp.status not in (200, 206):
            err = self.client.error(resp)
            if isinstance(err, NotFound):
                return_msg = f"blob {self.digest} not found in {self.repo}: {err}"
                raise NotFound(return_msg)
            raise err
        return self._check_range(resp, start)

    def _check_range(self, resp: Response, start: int) -> Response:
        length = resp.header("Content-Length")
        expect = self.size - (start if resp.status == 206 else 0)
        if length.isdigit() and int(length) != expect:
            # Known before a byte is read: no download (or resume) of what cannot be right.
            resp.close()
            total = int(length) + (start if resp.status == 206 else 0)
            raise RegistryError(f"blob {self.digest} from {self.client.host} is {total} bytes, "
                                f"its descriptor says {self.size}")
        if start and resp.status == 200:
            # The server ignored Range: skip what we already have.
            left = start
            while left:
                try:
                    chunk = resp.read(min(left, 1 << 20))
                except (OSError, http.client.HTTPException) as exc:
                    resp.close()
                    raise _read_error(resp.url, exc, self.client.timeout) from None
                if not chunk:
                    break
                left -= len(chunk)
        return resp

    def read(self, n: int = -1) -> bytes:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled")
        if self._resp is None:
            return b""
        want = (1 << 20) if n is None or n < 0 else n
        try:
            data = self._resp.read(want)
            failure: BaseException | None = None
        except (OSError, http.client.HTTPException) as exc:
            data, failure = b"", exc
        if data:
            self.offset += len(data)
            if self.offset > self.size:
                self.close()
                raise RegistryError(f"blob {self.digest} is larger than the {self.size} bytes its descriptor says")
            if self.on_bytes is not None:
                self.on_bytes(len(data))
            return data
        if failure is None and (not self.size or self.offset >= self.size):
            self.close()
            return b""
        # Short read: the connection broke before the whole blob arrived.
        self._resp.close()
        self._resp = None
        if self._attempts >= RESUME_ATTEMPTS:
            if isinstance(failure, TimeoutError | socket.timeout):
                raise RegistryError(f"error pulling blob {self.digest}: {self.client.host} sent no data for "
                                    f"{self.client.timeout:g}s after {self.offset} of {self.size} bytes "
                                    "(see registry_timeout)")
            raise RegistryError(f"error pulling blob {self.digest}: connection closed after {self.offset} of "
                                f"{self.size} bytes")
        self._attempts += 1
        log.info("blob %s: connection closed at %d of %d bytes; resuming", self.digest, self.offset, self.size)
        try:
            self._resp = self._open(self.offset)
        except RegistryError as exc:
            raise RegistryError(f"error pulling blob {self.digest}: connection closed after {self.offset} of "
                                f"{self.size} bytes, and resuming failed: {exc}") from None
        return self.read(n)

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
