"""Mutual TLS for the api's optional TCP listener, and for clients that use it.

A container engine's API is root on the host, so Berth never listens on plain
TCP: the TCP listener exists only with a CA that every client certificate must
chain to, and a client reaches a `tcp://` host only with its own certificate and
the CA that signed the server's. The unix socket stays the default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.config import Config
from services.common.errors import InvalidArgument

# File names in a cert dir (BERTH_CERT_PATH), as Docker lays out DOCKER_CERT_PATH.
CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "cert.pem", "key.pem"


class TlsError(InvalidArgument):
    """A TLS setting that cannot work: a missing file, an address that is not host:port."""


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of one side of a mutual-TLS connection."""

    cacert: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) as bytes; a missing or unreadable file is one clear line."""
        out = []
        for what, path in (("CA certificate", self.cacert), ("certificate", self.cert), ("key", self.key)):
            if not str(path):
                raise TlsError(f"tls: no {what} given")
            try:
                data = Path(path).read_bytes()
            except OSError as err:
                raise TlsError(f"tls: cannot read the {what} {path}: {err.strerror}") from None
            if b"-----BEGIN" not in data:
                raise TlsError(f"tls: the {what} {path} is not a PEM file")
            out.append(data)
        return out[0], out[1], out[2]


def listen_address(value: str) -> str:
    """`tcp://127.0.0.1:2376` or `127.0.0.1:2376` as gRPC's `host:port`; anything else is refused."""
    addr = value.removeprefix("tcp://")
    if "://" in addr:
        raise TlsError(f"tls: {value!r}: only tcp://HOST:PORT can be served with TLS")
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TlsError(f"tls: {value!r} is not HOST:PORT")
    return addr


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials that require a client certificate signed by `files.cacert`."""
    ca, cert, key = files.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def listener(cfg: Config) -> tuple[str, grpc.ServerCredentials] | None:
    """The api's TCP listener from the config (BERTH_TLS_LISTEN, BERTH_TLS_CACERT, ...), or None.

    An address without all three files is an error, never a plain-TCP fallback."""
    if not cfg.tls_listen:
        return None
    missing = [name for name, value in (("tls_cacert", cfg.tls_cacert), ("tls_cert", cfg.tls_cert),
                                        ("tls_key", cfg.tls_key)) if not value]
    if missing:
        raise TlsError(f"tls: listening on {cfg.tls_listen} needs {', '.join(missing)} "
                       "(plain TCP is never served)")
    files = TlsFiles(Path(cfg.tls_cacert), Path(cfg.tls_cert), Path(cfg.tls_key))
    return listen_address(cfg.tls_listen), server_credentials(files)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """A client's credentials: trust only `files.cacert`, present `files.cert`."""
    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def client_files(cacert: str = "", cert: str = "", key: str = "", cert_path: str = "") -> TlsFiles:
    """The client's files: explicit paths win, else `cert_path` (BERTH_CERT_PATH, like
    DOCKER_CERT_PATH) holding ca.pem, cert.pem and key.pem, else ~/.berth."""
    base = Path(cert_path or os.path.join(os.path.expanduser("~"), ".berth"))
    return TlsFiles(cacert=Path(cacert) if cacert else base / CA_FILE,
                    cert=Path(cert) if cert else base / CERT_FILE,
                    key=Path(key) if key else base / KEY_FILE)
