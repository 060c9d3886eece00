"""The api's optional TCP listener: mutual TLS only, with a throwaway CA made here by openssl.

A client with a certificate from the right CA is served (CLI flags, or BERTH_HOST /
BERTH_TLS_VERIFY / BERTH_CERT_PATH like Docker's variables); a client with no
certificate, one from another CA, or no TLS at all is refused at once with one line.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests import images
from tests.harness import EXTERNAL, REPO, Services

pytestmark = pytest.mark.skipif(EXTERNAL or shutil.which("openssl") is None,
                                reason="starts its own services; needs openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    """`name`.pem (a self-signed CA) and `name`-key.pem in `d`."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}-key.pem", "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}", cwd=d)


def make_cert(d: Path, ca: str, name: str, ext: str) -> None:
    """`name`-cert.pem and `name`-key.pem in `d`, signed by CA `ca`, with extensions `ext`."""
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}-key.pem",
             "-CAcreateserial", "-out", f"{name}-cert.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca (the real one), other-ca (a stranger), a server cert for IP 127.0.0.1, a client cert
    from each CA, and a server cert from the stranger."""
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_cert(d, "ca", "server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    make_cert(d, "ca", "client", "extendedKeyUsage=clientAuth\n")
    make_cert(d, "other-ca", "rogue", "extendedKeyUsage=clientAuth\n")
    make_cert(d, "other-ca", "rogue-server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    certs = d / "certs"  # a BERTH_CERT_PATH laid out like DOCKER_CERT_PATH
    certs.mkdir()
    shutil.copy(d / "ca.pem", certs / "ca.pem")
    shutil.copy(d / "client-cert.pem", certs / "cert.pem")
    shutil.copy(d / "client-key.pem", certs / "key.pem")
    return d


def tls_services(pki: Path, server: str = "server") -> tuple[Services, str]:
    port = free_port()
    svc = Services(Path(tempfile.mkdtemp(prefix="berth-tls-")), {
        "BERTH_TLS_LISTEN": f"127.0.0.1:{port}", "BERTH_TLS_CACERT": str(pki / "ca.pem"),
        "BERTH_TLS_CERT": str(pki / f"{server}-cert.pem"), "BERTH_TLS_KEY": str(pki / f"{server}-key.pem")})
    return svc, f"tcp://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def served(pki: Path):
    svc, host = tls_services(pki)
    try:
        svc.start()
        tar = svc.base / "busybox.tar"
        tar.write_bytes(images.busybox_rootfs_bytes())
        assert svc.berth("import", str(tar), "busybox:latest").returncode == 0
        yield svc, host
    finally:
        svc.close()


def cli(svc: Services, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI with only the TLS settings given here (not the server's BERTH_* paths)."""
    base = {k: v for k, v in svc.env.items() if not k.startswith("BERTH_")}
    return subprocess.run([sys.executable, "-m", "cli", *args], env={**base, **(env or {})}, cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def refused(r: subprocess.CompletedProcess, words: str = "berth: tls:") -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith(words), r.stderr
    assert "Traceback" not in r.stderr


def tls_flags(pki: Path, client: str = "client", ca: str = "ca") -> list[str]:
    return ["--tlsverify", "--tlscacert", str(pki / f"{ca}.pem"),
            "--tlscert", str(pki / f"{client}-cert.pem"), "--tlskey", str(pki / f"{client}-key.pem")]


def test_client_with_a_certificate_from_the_ca_is_served(served, pki):
    svc, host = served
    r = cli(svc, "-H", host, *tls_flags(pki), "ps")
    assert r.returncode == 0 and "CONTAINER ID" in r.stdout, r.stderr
    r = cli(svc, "-H", host, *tls_flags(pki), "run", "--rm", "busybox", "sh", "-c", "echo over-tls; exit 3")
    assert (r.returncode, r.stdout) == (3, "over-tls\n"), r.stderr


def test_docker_like_environment(served, pki):
    svc, host = served
    env = {"BERTH_HOST": host, "BERTH_TLS_VERIFY": "1", "BERTH_CERT_PATH": str(pki / "certs")}
    r = cli(svc, "images", env=env)
    assert r.returncode == 0 and "busybox" in r.stdout, r.stderr


def test_certificate_from_another_ca_is_refused(served, pki):
    svc, host = served
    start = time.monotonic()
    refused(cli(svc, "-H", host, *tls_flags(pki, client="rogue"), "ps"))
    assert time.monotonic() - start < 15


def test_no_certificate_and_plain_tcp_are_refused_not_hung(served, pki):
    svc, host = served
    address = host.removeprefix("tcp://")
    creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())  # no client cert
    for channel in (grpc.secure_channel(address, creds), grpc.insecure_channel(address)):
        with channel:
            with pytest.raises(grpc.RpcError) as err:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    # ... and the CLI never talks plain TCP, nor TLS without its own certificate
    refused(cli(svc, "-H", host, "ps"), "berth: tls:")
    env = {"BERTH_HOST": host, "BERTH_TLS_VERIFY": "1", "BERTH_CERT_PATH": str(svc.base / "nothing-here")}
    r = cli(svc, "ps", env=env)
    refused(r)
    assert "nothing-here/ca.pem" in r.stderr


def test_server_from_an_unknown_ca_is_refused_by_the_client(pki):
    svc, host = tls_services(pki, server="rogue-server")
    try:
        svc.start("api")
        refused(cli(svc, "-H", host, *tls_flags(pki), "ps"))
    finally:
        svc.close()


def test_api_refuses_to_listen_without_all_files(pki):
    svc = Services(Path(tempfile.mkdtemp(prefix="berth-tls-")), {"BERTH_TLS_LISTEN": f"127.0.0.1:{free_port()}",
                                                                 "BERTH_TLS_CACERT": str(pki / "ca.pem")})
    try:
        with pytest.raises(RuntimeError, match="exited with 1"):
            svc.start("api", timeout=10)
        assert "needs tls_cert, tls_key (plain TCP is never served)" in svc.log("api")
        assert "Traceback" not in svc.log("api")
    finally:
        svc.close()


def test_daemon_start_with_tls(pki, busybox_tar):
    svc = Services(Path(tempfile.mkdtemp(prefix="berth-tls-daemon-")))
    port = free_port()
    try:
        r = svc.berth("daemon", "start", "-H", f"tcp://127.0.0.1:{port}")
        assert r.returncode == 1 and "needs --tls" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
        assert not (svc.run_dir / "api.pid").exists()  # nothing started
        r = svc.berth("daemon", "start", "--tls", "--tlscacert", str(pki / "ca.pem"),
                      "--tlscert", str(pki / "server-cert.pem"), "--tlskey", str(pki / "missing.pem"),
                      "-H", f"tcp://127.0.0.1:{port}")
        assert r.returncode == 1 and "missing.pem" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr

        r = svc.berth("daemon", "start", "--tls", "--tlscacert", str(pki / "ca.pem"),
                      "--tlscert", str(pki / "server-cert.pem"), "--tlskey", str(pki / "server-key.pem"),
                      "-H", f"tcp://127.0.0.1:{port}")
        assert r.returncode == 0 and f"tcp://127.0.0.1:{port} with mutual TLS" in r.stdout, r.stderr
        host = f"tcp://127.0.0.1:{port}"
        r = cli(svc, "-H", host, *tls_flags(pki), "import", str(busybox_tar), "busybox")
        assert r.returncode == 0, r.stderr
        r = cli(svc, "-H", host, *tls_flags(pki), "run", "--rm", "busybox", "echo", "hi")
        assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
        refused(cli(svc, "-H", host, *tls_flags(pki, client="rogue"), "ps"))
    finally:
        svc.berth("daemon", "stop")
        svc.close()
    with socket.socket() as s:  # the listener went with the api
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_tls_settings_are_checked(served, pki):
    svc, host = served
    r = cli(svc, "-H", "tcp://127.0.0.1", *tls_flags(pki), "ps")
    refused(r)
    assert "HOST:PORT" in r.stderr
    bad = svc.base / "not-pem.txt"
    bad.write_text("hello")
    r = cli(svc, "-H", host, "--tlsverify", "--tlscacert", str(bad), "--tlscert", str(pki / "client-cert.pem"),
            "--tlskey", str(pki / "client-key.pem"), "ps")
    refused(r)
    assert "not a PEM file" in r.stderr

