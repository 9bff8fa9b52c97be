"""Which job URIs and which addresses avfuse may open: pure checks, no I/O but name lookups.

A job's ``uri`` comes from whoever can write to the jobs topic, and FFmpeg will
open almost anything (local files, ``concat:``, ``pipe:``, any host). The policy
keeps files inside configured roots and keeps network connections away from
denied networks (by default link-local, where cloud metadata lives, and the
cloud metadata addresses in their IPv6, IPv4-mapped and NAT64 spellings) and,
optionally, from private networks.

``check`` judges a job's URI before it reaches PyAV. It cannot see what FFmpeg
does next (resolve the host again, follow redirects, open the URLs inside
playlists): ``pipeline.ingest.egress.guard`` applies ``check_host`` to every connection
FFmpeg makes, at the moment it makes it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from pipeline.core.config import UriPolicyConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# FFmpeg picks a protocol from any "name:" prefix, so anything shaped like a
# scheme is one; a relative file named "a:b.mp4" must be written "./a:b.mp4".
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
# Hosts that inet_aton may read as IPv4 in decimal, hex or octal (2852039166,
# 0xA9FEA9FE, 0251.0376.0251.0376, 169.254.43518).
_LEGACY_IPV4 = re.compile(r"^[0-9a-fx.]+$", re.IGNORECASE)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_ECHO_CHARS = 80

# The words a refusal uses for the default ``deny_networks`` (pipeline/core/config.py has
# the list): link-local is where cloud metadata lives (169.254.169.254 on AWS, GCP,
# Azure, OpenStack); fd00:ec2::254 is AWS's IPv6 metadata address. IPv4-mapped and
# NAT64 (64:ff9b::/96) addresses are also unwrapped before the check.
_LINK_LOCAL = "a link-local address (where cloud metadata lives)"
DEFAULT_DENY_NETWORKS: tuple[str, ...] = tuple(UriPolicyConfig().deny_networks)
_WORDS = {
    "169.254.0.0/16": _LINK_LOCAL,
    "fe80::/10": _LINK_LOCAL,
    "fd00:ec2::254/128": "the cloud metadata address",
    "::ffff:169.254.0.0/112": f"{_LINK_LOCAL}, IPv4-mapped",
    "64:ff9b::a9fe:0/112": f"{_LINK_LOCAL}, through NAT64",
    "64:ff9b:1::a9fe:0/112": f"{_LINK_LOCAL}, through NAT64",
    "2002:a9fe::/32": f"{_LINK_LOCAL}, through 6to4",
}
_DENY_WORDS = {ipaddress.ip_network(cidr): words for cidr, words in _WORDS.items()}


class UriRefused(ValueError):
    """A URI the policy will not open; ``reason`` is one line and never holds a password."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class HostUnresolved(UriRefused):
    """A name that does not resolve: not refused by the policy, only unreachable."""


@dataclass(frozen=True)
class UriPolicy:
    """Every allowed scheme other than ``file`` is treated as a network scheme and needs a host.

    An address is judged by the longest of ``deny_networks`` and ``allow_networks``
    that holds it (a tie goes to deny); an address in neither is allowed unless
    ``allow_private_networks`` is false and it is not a global address. So
    ``allow_networks: [10.1.2.0/24]`` admits cameras in a private network that is
    otherwise refused, and ``deny_networks: [0.0.0.0/0, ::/0]`` with a few allowed
    networks makes an allow-list.
    """

    allowed_schemes: tuple[str, ...] = ("file", "http", "https", "rtsp", "rtmp", "srt")
    file_roots: tuple[str, ...] = ()  # folders files must resolve into; none: no files at all
    allow_private_networks: bool = True  # private, loopback and other non-global addresses
    deny_hosts: tuple[str, ...] = ("metadata.google.internal", "metadata", "instance-data")
    deny_networks: tuple[str | IPNetwork, ...] = DEFAULT_DENY_NETWORKS
    allow_networks: tuple[str | IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        # Config may hand over lists and mixed case; compare in one canonical form.
        object.__setattr__(self, "allowed_schemes", tuple(s.lower() for s in self.allowed_schemes))
        object.__setattr__(self, "file_roots", tuple(self.file_roots))
        object.__setattr__(self, "deny_hosts", tuple(_canonical_host(h) for h in self.deny_hosts))
        object.__setattr__(self, "deny_networks", tuple(parse_network(n) for n in self.deny_networks))
        object.__setattr__(self, "allow_networks", tuple(parse_network(n) for n in self.allow_networks))

    @classmethod
    def from_config(cls, cfg: UriPolicyConfig) -> "UriPolicy":
        """The policy of a ``UriPolicyConfig`` (``kafka.uri_policy``)."""
        return cls(allowed_schemes=tuple(cfg.allowed_schemes), file_roots=tuple(cfg.file_roots),
                   allow_private_networks=cfg.allow_private_networks,
                   deny_networks=tuple(cfg.deny_networks), allow_networks=tuple(cfg.allow_networks))

    def scheme(self, uri: str) -> str:
        """The scheme FFmpeg will pick for ``uri`` ("file" for a plain path), lower case."""
        match = _SCHEME.match(uri)
        return match.group(1).lower() if match else "file"

    def check(self, uri: str) -> str:
        """Return what to open (an absolute path for files, the URI unchanged otherwise)
        or raise ``UriRefused``."""
        if not isinstance(uri, str) or not uri.strip():
            raise UriRefused("uri is empty")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in uri):
            raise UriRefused("uri contains control characters")
        match = _SCHEME.match(uri)
        scheme = self.scheme(uri)
        if scheme not in self.allowed_schemes:
            allowed = ", ".join(self.allowed_schemes) or "none"
            raise UriRefused(f"scheme {_echo(scheme)} is not allowed (allowed: {allowed})")
        if scheme == "file":
            return self._check_file(_file_path(uri) if match else uri)
        self.check_host(network_host(uri), resolve_failure_ok=True)
        return uri

    def check_host(self, host: str, resolve_failure_ok: bool = False) -> list[IPAddress]:
        """The addresses ``host`` may be connected to, every one of them checked, in the
        resolver's order; raises ``UriRefused`` if the host is denied or any address is.

        Connect only to what this returns (not to the name): a name resolved again may
        answer differently (DNS rebinding). A name that does not resolve gives ``[]``
        with ``resolve_failure_ok`` (PyAV then reports it in its own words), else a refusal.
        """
        host = _canonical_host(host)
        if not host:
            raise UriRefused("uri has no host")
        for denied in self.deny_hosts:
            if host == denied or host.endswith("." + denied):
                raise UriRefused(f"host {_echo(host)} is denied")
        literal = _literal_address(host)
        if literal is not None:
            problem = self.address_problem(literal)
            shown = _embedded_ipv4(literal) or literal
            if problem and str(literal) == host:
                raise UriRefused(f"address {shown} is {problem}")
            if problem:
                raise UriRefused(f"host {_echo(host)} is {shown}, {problem}")
            return [literal]
        addresses = _resolve(host)
        if not addresses and not resolve_failure_ok:
            raise HostUnresolved(f"host {_echo(host)} does not resolve")
        for address in addresses:
            problem = self.address_problem(address)
            if problem:
                shown = _embedded_ipv4(address) or address
                raise UriRefused(f"host {_echo(host)} resolves to {shown}, {problem}")
        return addresses

    def address_problem(self, address: IPAddress) -> str | None:
        """Why a connection to ``address`` is refused, or None. An IPv4-mapped or NAT64
        address is refused if either spelling is."""
        embedded = _embedded_ipv4(address)
        for candidate in (address, embedded) if embedded is not None else (address,):
            problem = self._problem(candidate)
            if problem:
                return problem
        return None

    def _problem(self, address: IPAddress) -> str | None:
        best_deny = _longest_match(address, self.deny_networks)
        best_allow = _longest_match(address, self.allow_networks)
        if best_deny is not None and (best_allow is None or best_deny.prefixlen >= best_allow.prefixlen):
            return _DENY_WORDS.get(best_deny, f"in denied network {best_deny}")
        if best_allow is not None:
            return None
        if not self.allow_private_networks and not address.is_global:
            return "a private or loopback address (private networks are not allowed)"
        return None

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


def parse_network(text: str | IPNetwork) -> IPNetwork:
    """A CIDR ("169.254.0.0/16") or a bare address (one host); host bits must be zero."""
    if isinstance(text, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return text
    try:
        return ipaddress.ip_network(str(text).strip())
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a network (CIDR such as 169.254.0.0/16): {exc}") from None


def network_host(uri: str) -> str:
    """The host of a network URI as FFmpeg reads it; raises ``UriRefused`` when there is none."""
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        raise UriRefused("uri is not a valid URL") from None
    if not host:
        raise UriRefused("uri has no host")
    return host


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
    addresses: list[IPAddress] = []
    for info in infos:
        try:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        except ValueError:
            continue
        if address not in addresses:  # one entry per socket type: keep the order, drop repeats
            addresses.append(address)
    return addresses


def _longest_match(address: IPAddress, networks: tuple[IPNetwork, ...]) -> IPNetwork | None:
    best = None
    for network in networks:
        if network.version == address.version and address in network:
            if best is None or network.prefixlen > best.prefixlen:
                best = network
    return best


def _clip(text: str) -> str:
    return text if len(text) <= _ECHO_CHARS else text[: _ECHO_CHARS - 3] + "..."


def _echo(text: str) -> str:
    # repr escapes anything that could break the reason over lines.
    return _clip(repr(text))
