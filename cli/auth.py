"""Registry credentials the Docker way, on the client: `config.json` (`$DOCKER_CONFIG` or
`~/.docker`, mode 0600) with `auths`, `credHelpers` and `credsStore`.

Kept apart from the registry commands so that `run`, which sends the credentials of
the image's registry in case the image must be pulled, does not import them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cli.client import Client, CliError

DOCKER_HUB = "docker.io"
DOCKER_HUB_KEY = "https://index.docker.io/v1/"


# ---- config.json ---------------------------------------------------------------


def config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


def _read_config() -> dict[str, Any]:
    try:
        doc = json.loads(config_path().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"berth: cannot read {config_path()}: {exc}", 1) from None
    return doc if isinstance(doc, dict) else {}


def _write_config(doc: dict[str, Any]) -> None:
    """Write to a 0600 temp file and rename: never a moment with secrets readable or half-written."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".config-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent="\t")
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def registry_of(ref: str) -> str:
    """The registry host of a reference, by Docker's rule (a first component with '.' or ':', or localhost)."""
    name = ref.split("@", 1)[0]
    first, sep, _ = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return DOCKER_HUB if first == "index.docker.io" else first
    return DOCKER_HUB


def server_key(server: str) -> str:
    """How Docker names a registry in config.json."""
    host = server.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
    if host in ("", DOCKER_HUB, "index.docker.io", "registry-1.docker.io"):
        return DOCKER_HUB_KEY
    return host


def _matches(key: str, host: str) -> bool:
    return server_key(key) == server_key(host)


# ---- credential helpers (config.json `credHelpers` / `credsStore`) ---------------

HELPER_NOT_FOUND = "credentials not found in native keychain"
TOKEN_USERNAME = "<token>"  # a helper's way of returning an identity token


def _helper_for(doc: dict[str, Any], host: str) -> str:
    """The helper Docker would use for `host`: its credHelpers entry, else credsStore, else none."""
    helpers = doc.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for key, name in helpers.items():
            if isinstance(name, str) and name and _matches(key, host):
                return name
    store = doc.get("credsStore")
    return store if isinstance(store, str) else ""


def _run_helper(name: str, action: str, payload: str) -> str | None:
    """`docker-credential-<name> <action>` with `payload` on stdin; None if it has no credentials."""
    import subprocess

    program = f"docker-credential-{name}"
    try:
        r = subprocess.run([program, action], input=payload, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise CliError(f'berth: error getting credentials - err: exec: "{program}": executable file not found '
                       "in $PATH", 1) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CliError(f"berth: error getting credentials from {program}: {exc}", 1) from None
    if r.returncode != 0:
        out = (r.stdout.strip() or r.stderr.strip()).splitlines()
        if out and HELPER_NOT_FOUND in out[0]:
            return None
        raise CliError(f"berth: error getting credentials - {program} {action}: "
                       f"{out[0] if out else f'exit status {r.returncode}'}", 1)
    return r.stdout


def _helper_server(host: str) -> str:
    """What Docker hands a helper: the index URL for Docker Hub, else the host."""
    return server_key(host)


def _from_helper(name: str, host: str) -> Any:
    from berth.image.v1 import registry_pb2

    out = _run_helper(name, "get", _helper_server(host))
    if out is None:
        return registry_pb2.RegistryAuth()
    try:
        doc = json.loads(out)
        user, secret = str(doc.get("Username") or ""), str(doc.get("Secret") or "")
    except (ValueError, AttributeError):
        raise CliError(f"berth: error getting credentials - docker-credential-{name} get: invalid JSON", 1) from None
    if user == TOKEN_USERNAME:
        return registry_pb2.RegistryAuth(identity_token=secret)
    return registry_pb2.RegistryAuth(username=user, password=secret)


def auth_for(client: Client, host: str) -> Any:
    """The RegistryAuth message for `host`: from its credential helper if config.json names
    one (credHelpers, then credsStore, as Docker does), else from `auths` (empty if none)."""
    from berth.image.v1 import registry_pb2

    doc = _read_config()
    helper = _helper_for(doc, host)
    if helper:
        return _from_helper(helper, host)
    for key, entry in (doc.get("auths") or {}).items():
        if not isinstance(entry, dict) or not _matches(key, host):
            continue
        user, password = entry.get("username", ""), entry.get("password", "")
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise CliError(f"berth: invalid auth entry for {key} in {config_path()}", 1) from None
        return registry_pb2.RegistryAuth(username=user, password=password,
                                         identity_token=entry.get("identitytoken", ""),
                                         registry_token=entry.get("registrytoken", ""))
    return registry_pb2.RegistryAuth()
