"""Where to connect: `host`, `host:port`, `[v6]:port`, `http://host:port` or `https://host` (TLS).

A missing port means 50051, the server's default, whatever the scheme; a port alone (`50059`) means that
port on this machine (127.0.0.1). gRPC's own target schemes
(`unix:`, `dns:`, `ipv4:`, ...) are passed through unchanged: `dns:///name:port` for a name that resolves to
several replicas, `ipv4:10.0.0.1:50051,10.0.0.2:50051` for a list of them. A plain comma-separated list of
IP addresses (`10.0.0.1:50051,10.0.0.2:50051`) is that list too. The client spreads calls over the
addresses (round robin) and moves to another one when a replica goes away.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from facilitair.client._errors import FacilitairError, StatusCode

DEFAULT_PORT = 50051
_GRPC_SCHEMES = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:", "vsock:", "xds:")


@dataclass(frozen=True)
class Target:
    """A target as gRPC wants it, and whether the address itself asked for TLS (https://)."""

    address: str
    tls: bool | None


def _bad(target: str, why: str) -> FacilitairError:
    return FacilitairError(StatusCode.INVALID_ARGUMENT, f"target {target!r}: {why}", [("target", why)])


def parse_target(target: str) -> Target:
    """Normalise a target; FacilitairError (INVALID_ARGUMENT) when it cannot be one."""
    text = target.strip()
    if not text:
        raise _bad(target, "empty; give HOST:PORT")
    lowered = text.lower()
    if lowered.startswith(_GRPC_SCHEMES):
        return Target(text, None)
    tls: bool | None = None
    for scheme, secure in (("http://", False), ("https://", True)):
        if lowered.startswith(scheme):
            tls = secure
            text = text[len(scheme) :].rstrip("/")
            if "/" in text:
                raise _bad(target, "a path is not part of a gRPC target")
            break
    if "://" in text:
        raise _bad(target, "only http:// and https:// are understood")
    if "," in text:
        return Target(_address_list(target, text), tls)
    if text.startswith("["):  # [v6] or [v6]:port
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _bad(target, "an IPv6 address is written [ADDRESS]:PORT")
        return Target(f"[{host}]:{_port(target, rest[1:])}", tls)
    if text.count(":") > 1:  # a bare IPv6 address cannot carry a port
        return Target(f"[{text}]:{DEFAULT_PORT}", tls)
    if text.isdigit():  # a port alone: this machine's, not a host named "50059"
        return Target(f"127.0.0.1:{_port(target, text)}", tls)
    host, _, port = text.partition(":")
    if not host:
        raise _bad(target, "no host; give HOST:PORT")
    return Target(f"{host}:{_port(target, port)}", tls)


def _port(target: str, text: str) -> int:
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise _bad(target, f"port {text!r} is not a number from 1 to 65535")
    return int(text)


def _address_list(target: str, text: str) -> str:
    """`a:p,b:p` as gRPC's `ipv4:` (or `ipv6:`) list; names need `dns:///` (one name, many addresses)."""
    addresses = [parse_target(part).address for part in text.split(",") if part.strip()]
    hosts = [a.rpartition(":")[0].strip("[]") for a in addresses]
    try:
        families = {ipaddress.ip_address(h).version for h in hosts}
    except ValueError:
        raise _bad(target, "a list of addresses takes IP addresses; for a name, use dns:///NAME:PORT") from None
    if len(families) > 1:
        raise _bad(target, "a list of addresses must be all IPv4 or all IPv6")
    return f"ipv{families.pop()}:{','.join(addresses)}"
