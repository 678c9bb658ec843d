"""A throwaway CA and a node certificate for the secured local OpenSearch node (loopback only).

The security plugin reads PEM files from the node's config directory: the CA
(`root-ca.pem`), the node's certificate (`node.pem`, for transport and HTTP,
valid for 127.0.0.1 and localhost) and its key in PKCS#8 (`node-key.pem`).
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path


def _name(dn: str):
    """An x509 Name from "CN=a,OU=b,O=c" (written most specific first, as OpenSearch prints DNs)."""
    from cryptography import x509

    return x509.Name.from_rfc4514_string(dn)


def _certificate(subject: str, issuer: str, key, signing_key, days: int, extensions: list):
    """A certificate for `key`'s public half, signed by `signing_key`; `extensions` as (extension, critical)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def write(folder: Path, node_dn: str, days: int = 3650) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder.mkdir(parents=True, exist_ok=True)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_dn = "CN=catalogue-search local CA,O=catalogue-search"
    ca = _certificate(
        ca_dn,
        ca_dn,
        ca_key,
        ca_key,
        days,
        [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),  # cert + CRL sign
            (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
        ],
    )
    node_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    loopback = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    node = _certificate(
        node_dn,
        ca_dn,
        node_key,
        ca_key,
        days,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.KeyUsage(True, False, True, False, False, False, False, False, False), True),  # sign, encipher
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False),
            (x509.SubjectAlternativeName(loopback), False),
            (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
        ],
    )
    pem = serialization.Encoding.PEM
    (folder / "root-ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "node.pem").write_bytes(node.public_bytes(pem))
    key = folder / "node-key.pem"
    key.touch(mode=0o600)
    key.write_bytes(node_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
