"""Certificates and SuperNode keys for a federation (test or small deployments).

``init_certs(out)`` writes::

    ca.pem / ca.key                  the federation's CA (keep ca.key offline)
    server.pem / server.key          the SuperLink's TLS certificate (SANs: localhost, 127.0.0.1, --host names)
    client-<i>.key / client-<i>.pub  SuperNode authentication keys, ECDSA P-384 in OpenSSH format
    supernodes.txt                   the public keys, one a line (what the server registers)

Flower 1.42 has no client TLS certificates (no mTLS): a SuperNode checks the SuperLink's certificate
against ``ca.pem`` and proves who it is with its authentication key. Private keys are written with
mode 0600 and are never logged; the workspace and ``*.key``/``*.pem`` are git-ignored.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from uaap.errors import KeyMaterialError

if TYPE_CHECKING:
    from cryptography.x509 import GeneralName

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class FederationCerts:
    """Paths of everything :func:`init_certs` wrote."""

    out: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_keys: tuple[Path, ...]
    client_pubs: tuple[Path, ...]


def _write(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600 if private else 0o644)  # also when the file already existed


def _san(hosts: Sequence[str]) -> list[GeneralName]:
    from cryptography import x509

    names: list[GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def init_certs(
    out: str | Path,
    *,
    hosts: Sequence[str] = (),
    clients: int = 3,
    days: int = 365,
    overwrite: bool = False,
) -> FederationCerts:
    """Create a CA, a server certificate for ``hosts`` and ``clients`` SuperNode auth key pairs in ``out``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(out).expanduser().resolve()
    if clients < 0:
        raise KeyMaterialError(f"clients={clients}; give 0 or more SuperNode keys to create")
    if (out / "ca.key").exists() and not overwrite:
        raise KeyMaterialError(
            f"{out} already holds a CA (ca.key); pass --force to replace it or choose another --out folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    now = dt.datetime.now(dt.UTC)
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    nocrypt = serialization.NoEncryption()

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "UAAP federation CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    all_hosts = [*DEFAULT_HOSTS, *hosts]
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_san(all_hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    files = {
        "ca.pem": (ca_cert.public_bytes(pem), False),
        "ca.key": (ca_key.private_bytes(pem, pkcs8, nocrypt), True),
        "server.pem": (server_cert.public_bytes(pem), False),
        "server.key": (server_key.private_bytes(pem, pkcs8, nocrypt), True),
    }
    keys, pubs, lines = [], [], []
    for i in range(clients):
        priv, pub = supernode_keypair(comment=f"uaap-client-{i}")
        files[f"client-{i}.key"] = (priv, True)
        files[f"client-{i}.pub"] = (pub, False)
        keys.append(out / f"client-{i}.key")
        pubs.append(out / f"client-{i}.pub")
        lines.append(pub.decode().strip())
    files["supernodes.txt"] = (("\n".join(lines) + "\n").encode() if lines else b"", False)
    for name, (data, private) in files.items():
        _write(out / name, data, private)
    return FederationCerts(
        out, out / "ca.pem", out / "ca.key", out / "server.pem", out / "server.key", tuple(keys), tuple(pubs)
    )


def supernode_keypair(comment: str = "uaap-client") -> tuple[bytes, bytes]:
    """A SuperNode authentication key pair: (OpenSSH private key, OpenSSH public key line), ECDSA P-384."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return priv, pub + f" {comment}\n".encode()


def write_supernode_key(path: str | Path, comment: str = "uaap-client") -> tuple[Path, Path]:
    """Write one SuperNode key pair to ``path`` (mode 0600) and ``path.pub``; returns both paths."""
    path = Path(path).expanduser().resolve()
    priv, pub = supernode_keypair(comment)
    _write(path, priv, True)
    pub_path = path.with_name(path.name.removesuffix(".key") + ".pub")
    _write(pub_path, pub, False)
    return path, pub_path


def public_key_of(private_key: str | Path) -> str:
    """The OpenSSH public key line of a SuperNode private key (to check it against a registered one)."""
    from cryptography.hazmat.primitives import serialization

    path = Path(private_key)
    if not path.is_file():
        raise KeyMaterialError(f"SuperNode key {str(path)!r} does not exist; create one with `uaap certs init`")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise KeyMaterialError(
            f"{path} is not an OpenSSH private key ({exc}); use a client-<i>.key written by `uaap certs init`"
        ) from exc
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def check_certificate(cert: str | Path, ca: str | Path) -> None:
    """Raise KeyMaterialError unless ``cert`` was signed by the CA in ``ca`` (both PEM)."""
    from cryptography import x509

    for p in (cert, ca):
        if not Path(p).is_file():
            raise KeyMaterialError(f"certificate file {str(p)!r} does not exist")
    leaf = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    root = x509.load_pem_x509_certificate(Path(ca).read_bytes())
    try:
        leaf.verify_directly_issued_by(root)
    except Exception as exc:  # cryptography raises several types for a wrong issuer
        raise KeyMaterialError(
            f"{cert} was not issued by the CA in {ca} ({exc.__class__.__name__}); use the ca.pem of this federation"
        ) from exc
