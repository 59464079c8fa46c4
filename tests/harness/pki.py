"""Certificates for the TLS tests: a throwaway CA, a server certificate, and client certificates of any shape."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from facilitair.client import Client


@dataclass
class Pki:
    """A throwaway CA, a server certificate for localhost/127.0.0.1, and the files the server reads."""

    ca: trustme.CA
    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def make(cls, folder: Path) -> Pki:
        """A new CA and a server certificate for localhost, their files written into `folder`."""
        ca = trustme.CA()
        server = ca.issue_cert("localhost", "127.0.0.1")
        paths = (folder / "ca.pem", folder / "server.pem", folder / "server.key")
        paths[0].write_bytes(ca.cert_pem.bytes())
        paths[1].write_bytes(server.cert_chain_pems[0].bytes())
        paths[2].write_bytes(server.private_key_pem.bytes())
        return cls(ca, *paths)

    @property
    def root(self) -> bytes:
        """The CA certificate, PEM."""
        return self.ca.cert_pem.bytes()

    def client(self, target: str, identity: str | None = None, options: list[tuple[str, Any]] | None = None) -> Client:
        """A TLS client trusting this CA, presenting a certificate issued for `identity` when given."""
        if identity is None:
            return Client(target, root_certificates=self.root, options=options)
        cert = self.ca.issue_cert(identity)
        return Client(
            target,
            root_certificates=self.root,
            private_key=cert.private_key_pem.bytes(),
            certificate_chain=cert.cert_chain_pems[0].bytes(),
            options=options,
        )

    def nameless_cert(self, sans: Sequence[x509.GeneralName]) -> tuple[bytes, bytes]:
        """A client certificate with an EMPTY subject (as SPIFFE issues them) and `sans` as its SAN: (PEM, key PEM).

        trustme always writes a subject, so the certificate is built with `cryptography` and signed by this CA.
        """
        ca_cert = x509.load_pem_x509_certificate(self.root)
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
            .not_valid_after(datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if sans:  # with an empty subject, the SAN extension must be critical (RFC 5280 4.2.1.6)
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=True)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def nameless_client(self, target: str, sans: Sequence[x509.GeneralName]) -> Client:
        """A client presenting a certificate from `nameless_cert`."""
        chain, key = self.nameless_cert(sans)
        return Client(target, root_certificates=self.root, certificate_chain=chain, private_key=key)

    @staticmethod
    def subject(client_cert: trustme.LeafCert) -> str:
        """The subject of a certificate as gRPC reports it (RFC 4514)."""
        return x509.load_pem_x509_certificate(client_cert.cert_chain_pems[0].bytes()).subject.rfc4514_string()
