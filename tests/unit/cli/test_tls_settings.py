"""TLS settings: addresses, the cert dir layout, and the refusal to serve or use plain TCP."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import client
from cli.app import _command_name
from services.common import config, tls


@pytest.mark.parametrize("value", ["tcp://127.0.0.1:2376", "127.0.0.1:2376", "[::1]:2376"])
def test_listen_address(value):
    assert tls.listen_address(value) == value.removeprefix("tcp://")


@pytest.mark.parametrize("value", ["unix:///run/x.sock", "tcp://127.0.0.1", "tcp://:2376", "h:0", "h:99999", "h:x"])
def test_bad_listen_address(value):
    with pytest.raises(tls.TlsError):
        tls.listen_address(value)


def test_cert_path_layout_and_explicit_files_win(tmp_path):
    files = tls.client_files(cert="/x/mine.pem", cert_path=str(tmp_path))
    assert files == tls.TlsFiles(tmp_path / "ca.pem", Path("/x/mine.pem"), tmp_path / "key.pem")


def test_missing_and_non_pem_files_are_one_line(tmp_path):
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(tls.TlsError, match=r"^tls: the CA certificate .* is not a PEM file$"):
        tls.TlsFiles(tmp_path / "ca.pem", tmp_path / "c", tmp_path / "k").read()
    with pytest.raises(tls.TlsError, match=r"^tls: cannot read the CA certificate .*: No such file or directory$"):
        tls.TlsFiles(tmp_path / "none.pem", tmp_path / "c", tmp_path / "k").read()


def test_listener_is_off_by_default_and_never_plain():
    assert tls.listener(config.load({"BERTH_CONFIG": "/nonexistent"})) is None
    cfg = config.load({"BERTH_CONFIG": "/nonexistent", "BERTH_TLS_LISTEN": "127.0.0.1:2376"})
    with pytest.raises(tls.TlsError, match="needs tls_cacert, tls_cert, tls_key"):
        tls.listener(cfg)


def test_tcp_without_tlsverify_is_refused(monkeypatch):
    monkeypatch.delenv("BERTH_TLS_VERIFY", raising=False)
    monkeypatch.setitem(client.TLS, "verify", False)
    with pytest.raises(client.CliError, match="needs --tlsverify"):
        client.tls_channel("tcp://127.0.0.1:2376", [])


def test_tls_failure_reasons():
    assert client.tls_failure("failed to connect to all addresses; last error: UNAVAILABLE: "
                              "ipv4:127.0.0.1:1: Connection refused") == ""
    assert client.tls_failure("the runtime service is not running (unix:///tmp/berth-tls/run/runtime.sock)") == ""
    assert "not signed by the given CA" in client.tls_failure(
        "Ssl handshake failed: SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
        "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate")
    assert "client certificate" in client.tls_failure("Socket closed")


def test_global_tls_options_are_skipped_when_finding_the_command():
    assert _command_name(["-H", "tcp://h:1", "--tlsverify", "--tlscacert", "ca.pem", "--tlscert", "c",
                          "--tlskey", "k", "ps"]) == "ps"
