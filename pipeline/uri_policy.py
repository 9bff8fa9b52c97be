"""Which job URIs avfuse may open: a pure check, run before a URI reaches PyAV.

A job's ``uri`` comes from whoever can write to the jobs topic, and FFmpeg will
open almost anything (local files, ``concat:``, ``pipe:``, any host). The policy
keeps files inside configured roots and keeps network URIs away from the cloud
metadata service and, optionally, from private networks.

Limits, by design of a check done before opening: FFmpeg resolves the host
again when it connects (DNS rebinding), follows HTTP redirects, and opens the
URLs inside playlists. Callers should also restrict FFmpeg itself (e.g. the
``protocol_whitelist`` open option) for defence in depth.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# FFmpeg picks a protocol from any "name:" prefix, so anything shaped like a
# scheme is one; a relative file named "a:b.mp4" must be written "./a:b.mp4".
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
# Hosts that inet_aton may read as IPv4 in decimal, hex or octal (2852039166,
# 0xA9FEA9FE, 0251.0376.0251.0376, 169.254.43518).
_LEGACY_IPV4 = re.compile(r"^[0-9a-fx.]+$", re.IGNORECASE)
_AWS_METADATA_V6 = ipaddress.IPv6Address("fd00:ec2::254")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_ECHO_CHARS = 80


class UriRefused(ValueError):
    """A URI the policy will not open; ``reason`` is one line and never holds a password."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class UriPolicy:
    """Every allowed scheme other than ``file`` is treated as a network scheme and needs a host."""

    allowed_schemes: tuple[str, ...] = ("file", "http", "https", "rtsp", "rtmp", "srt")
    file_roots: tuple[str, ...] = ()  # folders files must resolve into; none: no files at all
    allow_private_networks: bool = True  # private, loopback and other non-global addresses
    deny_hosts: tuple[str, ...] = ("metadata.google.internal", "metadata", "instance-data")

    def __post_init__(self) -> None:
        # Config may hand over lists and mixed case; compare in one canonical form.
        object.__setattr__(self, "allowed_schemes", tuple(s.lower() for s in self.allowed_schemes))
        object.__setattr__(self, "file_roots", tuple(self.file_roots))
        object.__setattr__(self, "deny_hosts", tuple(_canonical_host(h) for h in self.deny_hosts))

    def check(self, uri: str) -> str:
        """Return what to open (an absolute path for files, the URI unchanged otherwise)
        or raise ``UriRefused``."""
        if not isinstance(uri, str) or not uri.strip():
            raise UriRefused("uri is empty")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in uri):
            raise UriRefused("uri contains control characters")
        match = _SCHEME.match(uri)
        scheme = match.group(1).lower() if match else "file"
        if scheme not in self.allowed_schemes:
            allowed = ", ".join(self.allowed_schemes) or "none"
            raise UriRefused(f"scheme {_echo(scheme)} is not allowed (allowed: {allowed})")
        if scheme == "file":
            return self._check_file(_file_path(uri) if match else uri)
        self._check_network(uri)
        return uri

    def _check_file(self, path: str) -> str:
        if not self.file_roots:
            raise UriRefused("no file roots are configured")
        # realpath, not abspath: ".." and symlinks must not lead out of a root.
        resolved = os.path.realpath(path)
        for root in self.file_roots:
            real_root = os.path.realpath(root)
            if os.path.commonpath([real_root, resolved]) == real_root:
                return resolved
        roots = ", ".join(self.file_roots)
        raise UriRefused(f"file {_echo(resolved)} is outside the file roots ({_clip(roots)})")

    def _check_network(self, uri: str) -> None:
        try:
            host = urlsplit(uri).hostname
        except ValueError:
            raise UriRefused("uri is not a valid URL") from None
        if not host:
            raise UriRefused("uri has no host")
        host = _canonical_host(host)
        for denied in self.deny_hosts:
            if host == denied or host.endswith("." + denied):
                raise UriRefused(f"host {_echo(host)} is denied")
        literal = _literal_address(host)
        if literal is not None:
            address = _embedded_ipv4(literal) or literal
            problem = self._address_problem(address)
            if problem and str(address) == host:
                raise UriRefused(f"address {address} is {problem}")
            if problem:
                raise UriRefused(f"host {_echo(host)} is {address}, {problem}")
            return
        for resolved in _resolve(host):
            address = _embedded_ipv4(resolved) or resolved
            problem = self._address_problem(address)
            if problem:
                raise UriRefused(f"host {_echo(host)} resolves to {address}, {problem}")

    def _address_problem(self, address: IPAddress) -> str | None:
        if address == _AWS_METADATA_V6:
            return "the cloud metadata address"
        if address.is_link_local:
            return "a link-local address (where cloud metadata lives)"
        if not self.allow_private_networks and not address.is_global:
            return "a private or loopback address (private networks are not allowed)"
        return None


def redact(uri: str) -> str:
    """The URI with any password replaced by ``***``, for error records and logs."""
    scheme_end = uri.find("://")
    if scheme_end < 0:
        return uri
    start = scheme_end + 3
    end = len(uri)
    for stop in "/?#":
        found = uri.find(stop, start)
        if found >= 0:
            end = min(end, found)
    authority = uri[start:end]
    # The last "@" ends the userinfo (as in FFmpeg), so a password may hold "@".
    userinfo, at, hostport = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return uri
    user = userinfo.split(":", 1)[0]
    return f"{uri[:start]}{user}:***@{hostport}{uri[end:]}"


def _file_path(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise UriRefused(f"file URI names host {_echo(parts.netloc)}; only local files can be opened")
    if parts.query or parts.fragment:
        # FFmpeg would read "?" and "#" as part of the file name; refuse the ambiguity.
        raise UriRefused("file URI must not have a query or fragment (percent-encode '?' and '#')")
    path = unquote(parts.path)
    if not path:
        raise UriRefused("file URI has no path")
    if "\x00" in path:
        raise UriRefused("file path contains a NUL byte")
    return path


def _canonical_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:
            # getaddrinfo (and so FFmpeg) reads these forms as IPv4; ipaddress does not.
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _resolve(host: str) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        # Not a refusal: PyAV reports an unknown host with FFmpeg's own message.
        return []
    addresses = []
    for info in infos:
        try:
            addresses.append(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
        except ValueError:
            continue
    return addresses


def _clip(text: str) -> str:
    return text if len(text) <= _ECHO_CHARS else text[: _ECHO_CHARS - 3] + "..."


def _echo(text: str) -> str:
    # repr escapes anything that could break the reason over lines.
    return _clip(repr(text))
