"""A small client SDK over the api socket; CLI commands never build gRPC calls inline.

gRPC and the generated stubs cost ~200 ms to import, so they are imported on
first use: `berth --help` and argument errors stay instant.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

DEFAULT_HOST = "unix:///run/berth/api.sock"
EXIT_CODE_KEY = "berth-exit-code"
CHUNK = 1 << 20


# The global --tlsverify/--tlscacert/--tlscert/--tlskey options (cli/app.py); the
# environment (BERTH_TLS_VERIFY, BERTH_CERT_PATH) fills in what they leave out.
TLS: dict[str, Any] = {"verify": False, "cacert": "", "cert": "", "key": ""}


class CliError(Exception):
    """One line for stderr and the exit code to leave with."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def host() -> str:
    """The api endpoint: --host / BERTH_HOST, else the run dir's api.sock."""
    if os.environ.get("BERTH_HOST"):
        return os.environ["BERTH_HOST"]
    if os.environ.get("BERTH_API_SOCKET"):
        return "unix://" + os.environ["BERTH_API_SOCKET"]
    if os.environ.get("BERTH_RUN_DIR"):
        return "unix://" + os.path.join(os.environ["BERTH_RUN_DIR"], "api.sock")
    return DEFAULT_HOST


class Client:
    """Thin wrappers over the Berth API, one method per call."""

    def __init__(self, target: str | None = None) -> None:
        # gRPC core's own log lines (e.g. a failed TLS handshake) would break the one-line errors
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        import grpc

        from berth.api.v1 import api_pb2, api_pb2_grpc
        from berth.image.v1 import image_pb2
        from berth.runtime.v1 import runtime_pb2
        from berth.types.v1 import types_pb2

        self.grpc = grpc
        self.api = api_pb2
        self.image = image_pb2
        self.runtime = runtime_pb2
        self.types = types_pb2
        self.target = target or host()
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        if self.target.startswith("tcp://"):
            self.channel = tls_channel(self.target, options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=options)
        self.stub = api_pb2_grpc.BerthStub(self.channel)

    def call(self, method: str, request: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, **kwargs)
        except self.grpc.RpcError as err:
            raise self.error(err) from None

    def stream(self, responses: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from responses
        except self.grpc.RpcError as err:
            raise self.error(err) from None

    def error(self, err: Any, exit_code: int = 1) -> CliError:
        """Map a gRPC status to one line and Docker's exit codes."""
        code = err.code()
        if (code == self.grpc.StatusCode.UNAVAILABLE and self.target.startswith("tcp://")
                and (reason := tls_failure(err.details() or ""))):
            return CliError(f"berth: tls: handshake with {self.target} failed: {reason}", exit_code)
        if code == self.grpc.StatusCode.UNAVAILABLE and "Permission denied" in (err.details() or ""):
            return CliError(f"permission denied while trying to connect to the Berth daemon socket at "
                            f"{self.target} (root or the `berth` group can use it)", exit_code)
        if code == self.grpc.StatusCode.UNAVAILABLE and "service is not running" not in (err.details() or ""):
            return CliError(f"Cannot connect to the Berth daemon at {self.target}. Is the berth daemon running?",
                            exit_code)
        if code == self.grpc.StatusCode.CANCELLED:
            return CliError("cancelled", exit_code)
        for key, value in err.trailing_metadata() or ():
            if key == EXIT_CODE_KEY:
                exit_code = int(value)
        return CliError(f"Error response from daemon: {err.details()}", exit_code)

    def service(self, stub_class: Any, pb: Any) -> ServiceClient:
        """Another api service (Images, Networks, Volumes) on this connection."""
        return ServiceClient(self, stub_class(self.channel), pb)

    # --- helpers for streams ------------------------------------------------

    @staticmethod
    def file_chunks(path: str) -> Iterator[bytes]:
        with open(path, "rb") if path != "-" else os.fdopen(0, "rb", closefd=False) as f:
            while chunk := f.read(CHUNK):
                yield chunk


def tls_channel(target: str, options: list[tuple[str, Any]]) -> Any:
    """A mutual-TLS channel to a tcp:// host; without --tlsverify there is none (never plain TCP)."""
    import grpc

    from services.common import tls

    verify = TLS["verify"] or os.environ.get("BERTH_TLS_VERIFY", "").lower() not in ("", "0", "false")
    if not verify:
        raise CliError(f"berth: tls: {target} needs --tlsverify with a client certificate "
                       "(Berth never uses plain TCP)", 1)
    files = tls.client_files(TLS["cacert"], TLS["cert"], TLS["key"], os.environ.get("BERTH_CERT_PATH", ""))
    try:
        address = tls.listen_address(target)
        credentials = tls.channel_credentials(files)
    except tls.TlsError as err:
        raise CliError(f"berth: {err}", 1) from None
    return grpc.secure_channel(address, credentials, options=options)


def tls_failure(details: str) -> str:
    """Why a mutual-TLS connection failed, if gRPC's connection error says it was the handshake."""
    lowered = details.lower()
    if "service is not running" in lowered or "connection refused" in lowered:
        return ""  # a downstream service, or nobody listening: not a TLS matter
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        return f"the server's certificate is not signed by the given CA ({details.rsplit(': ', 1)[-1].strip()})"
    if any(m in lowered for m in ("socket closed", "connection reset", "end of tcp stream", "broken pipe")):
        return "the server closed the handshake (is the client certificate signed by the server's CA?)"
    if "handshake" in lowered or "ssl_error" in lowered:
        return details.rsplit(": ", 1)[-1].strip() or details
    return ""


class ServiceClient:
    """One of the api's other gRPC services, with the Client's error mapping."""

    def __init__(self, client: Client, stub: Any, pb: Any) -> None:
        self.client = client
        self.stub = stub
        self.pb = pb

    def call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request)
        except self.client.grpc.RpcError as err:
            raise self.client.error(err) from None

    def stream(self, method: str, request: Any) -> Iterator[Any]:
        return self.client.stream(getattr(self.stub, method)(request))


def pairs(items: list[str]) -> dict[str, str]:
    """`--label k=v` / `--filter k=v` lists as a dict (a bare `k` maps to "")."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = value
    return out
