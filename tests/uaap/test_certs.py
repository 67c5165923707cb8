"""Certificates for TLS and SuperNode authentication (uaap.certs): files, modes, chain, refusal, CLI."""

from __future__ import annotations

import stat

import pytest


def test_certs_files_modes_and_chain(certs):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    for key in (certs.ca_key, certs.server_key, *certs.client_keys):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE(certs.out.stat().st_mode) == 0o700
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the chain is wrong
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "server.example" in san.get_values_for_type(x509.DNSName)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert any(str(ip) == "127.0.0.1" for ip in san.get_values_for_type(x509.IPAddress))
    # SuperNode keys: ECDSA P-384 in OpenSSH format, the .pub matches the private key
    from uaap.certs import public_key_of

    for key, pub in zip(certs.client_keys, certs.client_pubs, strict=True):
        priv = serialization.load_ssh_private_key(key.read_bytes(), password=None)
        assert priv.curve.name == "secp384r1"
        assert pub.read_text().split()[:2] == public_key_of(key).split()[:2]
    assert len((certs.out / "supernodes.txt").read_text().splitlines()) == 2


def test_certs_refuse_overwrite_and_foreign_ca(certs, tmp_path):
    from uaap.certs import check_certificate, init_certs
    from uaap.errors import KeyMaterialError

    with pytest.raises(KeyMaterialError, match="already holds a CA"):
        init_certs(certs.out)
    other = init_certs(tmp_path / "other", clients=0)
    with pytest.raises(KeyMaterialError, match="not issued by the CA"):
        check_certificate(certs.server_cert, other.ca_cert)
    check_certificate(certs.server_cert, certs.ca_cert)


def test_certs_cli(tmp_path):
    from uaap.cli import main

    assert main(["certs", "init", "--out", str(tmp_path / "c"), "--clients", "1", "--host", "10.0.0.5"]) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "ca.key",
        "ca.pem",
        "client-0.key",
        "client-0.pub",
        "server.key",
        "server.pem",
        "supernodes.txt",
    ]
    assert main(["certs", "init", "--out", str(tmp_path / "c")]) == 2  # exists: clear error, no overwrite
