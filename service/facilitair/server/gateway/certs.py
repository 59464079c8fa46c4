"""Whom an HTTPS client certificate names, in the words gRPC uses, so both transports agree on the principal.

gRPC reports a verified certificate's subject in RFC 2253 form (OpenSSL's XN_FLAG_RFC2253: the last RDN first,
short attribute names, special characters escaped) and its URI SANs; transport/guard.py's
`certificate_identity` turns those into the principal. Python's ssl module gives the same certificate as a
dict; this module rebuilds gRPC's view of it and asks the same function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from facilitair.server.transport.guard import certificate_identity

# OpenSSL's short names of the attributes Python's ssl module spells out.
SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "streetAddress": "street",
    "domainComponent": "DC",
    "userId": "UID",
    "emailAddress": "emailAddress",
    "serialNumber": "serialNumber",
    "givenName": "GN",
    "surname": "SN",
    "title": "title",
}
_SPECIAL = ',+"\\<>;='


def _escaped(value: str) -> str:
    out = "".join(f"\\{c}" if c in _SPECIAL else c for c in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and len(out) > 1:
        out = out[:-1] + "\\ "
    return out


def rfc2253_subject(subject: Sequence[Sequence[tuple[str, str]]]) -> str:
    """A subject from ssl's getpeercert() in RFC 2253 form ("CN=a,O=b")."""
    rdns = ["+".join(f"{SHORT_NAMES.get(name, name)}={_escaped(value)}" for name, value in rdn) for rdn in subject]
    return ",".join(reversed(rdns))


def peer_identity(peercert: Mapping[str, Any] | None) -> str | None:
    """The principal a verified client certificate names, as the gRPC side names it; None when it names nobody."""
    if not peercert:
        return None
    subject = rfc2253_subject(peercert.get("subject", ()))
    uris = [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]
    auth = {"x509_subject": [subject.encode()] if subject else [], "peer_uri": [u.encode() for u in uris]}
    return certificate_identity(auth)
