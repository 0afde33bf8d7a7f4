"""Outbound HTTP to URLs a tenant chose (job webhooks): where such a request may go, a transport that checks the
address it really connects to, and such a URL in words without its credentials.

Tenants are hostile, so a webhook must not become a way into the server's own network (SSRF). By default it may
reach external addresses only: loopback, private (RFC 1918, RFC 4193), link-local (where cloud metadata services
answer), carrier-grade NAT, unspecified, multicast and reserved addresses are denied, in any spelling (an IPv6
address that carries an IPv4 one, IPv4-mapped, IPv4-translated or NAT64, is judged by the IPv4 one). The operator
changes that with `DOCKYARD_WEBHOOK_ALLOWED_HOSTS`, whose semantics are Gitea's `[webhook] ALLOWED_HOST_LIST`
(the best-known setting of its kind): comma-separated entries, each a keyword (`external`, the default;
`loopback`; `private`, which also takes carrier-grade NAT; `*`, anything), a network (`10.1.0.0/16`,
`169.254.169.254/32`) or a host-name pattern (`hooks.internal`, `*.corp.example`) whose names may then resolve
to any address. The list replaces the default, so a list without `external` keeps webhooks off the internet.

The check is made where the connection is made, never before it, so DNS rebinding has no gap to use:
`GuardedBackend`, the network backend of the webhook client's connection pool, resolves a name once, judges
every address it got, and connects to a judged address itself, while TLS (SNI and the certificate's check) and
the Host header keep the name from the URL. What can be judged without DNS (a literal address, in any spelling
the system resolver reads) is refused at submission as well (`url_refusal`).
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import unquote

import httpcore
import httpx

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

SETTING = "DOCKYARD_WEBHOOK_ALLOWED_HOSTS"
EXTERNAL, LOOPBACK, PRIVATE, ANY = "external", "loopback", "private", "*"
KEYWORDS = (EXTERNAL, LOOPBACK, PRIVATE, ANY)

_METADATA = "cloud metadata"
_CGNAT = "carrier-grade NAT"
# The addresses webhooks may not reach by default and their kind, the most specific first: IANA's special-purpose
# registries, as Gitea's hostmatcher and Python's `ipaddress` read them, written out so that no Python version
# changes them.
_DENIED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ip_network(cidr), kind)
    for cidr, kind in (
        ("169.254.169.254/32", _METADATA),  # AWS, GCP, Azure, OpenStack, ...
        ("168.63.129.16/32", _METADATA),  # Azure's WireServer, in a public range
        ("fd00:ec2::254/128", _METADATA),  # AWS's IPv6 one
        ("0.0.0.0/8", "unspecified"),  # a connection to 0.0.0.0 reaches the host itself
        ("10.0.0.0/8", PRIVATE),
        ("100.64.0.0/10", _CGNAT),
        ("127.0.0.0/8", LOOPBACK),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", PRIVATE),
        ("192.0.0.0/24", "reserved"),  # IETF protocol assignments
        ("192.0.2.0/24", "reserved"),  # documentation
        ("192.88.99.0/24", "reserved"),  # 6to4 relays
        ("192.168.0.0/16", PRIVATE),
        ("198.18.0.0/15", "reserved"),  # benchmarking
        ("198.51.100.0/24", "reserved"),
        ("203.0.113.0/24", "reserved"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # the broadcast address among them
        ("::/128", "unspecified"),
        ("::1/128", LOOPBACK),
        ("fc00::/7", PRIVATE),
        ("fec0::/10", PRIVATE),  # site-local, deprecated
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
        ("2001::/23", "reserved"),  # IETF protocol assignments, Teredo among them
        ("2001:db8::/32", "reserved"),
        ("2002::/16", "reserved"),  # 6to4, which hands the packet to a relay for the IPv4 address it carries
    )
)
_GLOBAL_UNICAST = ip_network("2000::/3")  # the rest of IPv6 is unallocated or special
_ALLOWED_BY = {LOOPBACK: LOOPBACK, PRIVATE: PRIVATE, _CGNAT: PRIVATE}  # the keyword that allows a kind
_TRANSLATED = 0xFFFF_0000  # ::ffff:0:a.b.c.d (RFC 2765), its top 96 bits
_NAT64 = int(IPv6Address("64:ff9b::")) >> 32  # 64:ff9b::a.b.c.d (RFC 6052), through which DNS64 reaches IPv4
_INET_ATON = re.compile(r"[0-9a-fA-FxX.]+")


class Refused(Exception):
    """A destination the policy denies; the message is the sentence that says why and who may allow it."""


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, IPv4-translated, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if int(address) >> 32 in (_TRANSLATED, _NAT64):
        return IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def denied_kind(address: IPAddress) -> str | None:
    """The kind of a non-external address (`loopback`, `private`, `link-local`, ...); None for an external one."""
    if isinstance(address, IPv6Address) and (carried := embedded_ipv4(address)) is not None:
        return denied_kind(carried)
    for network, kind in _DENIED:
        if address in network:
            return kind
    if isinstance(address, IPv6Address) and address not in _GLOBAL_UNICAST:
        return "reserved"
    return None


def literal_address(host: str) -> IPAddress | None:
    """`host` as an address when it is one, in any spelling the system resolver reads as one: IPv6, dotted IPv4,
    and `inet_aton`'s shorter, decimal, octal and hex forms (`127.1`, `2130706433`, `0x7f.1`)."""
    host = host.removeprefix("[").removesuffix("]")
    try:
        return ip_address(host)
    except ValueError:
        pass
    if not _INET_ATON.fullmatch(host):
        return None
    try:
        return IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


@dataclass(frozen=True)
class HostPolicy:
    """Where webhooks may go: the parsed `DOCKYARD_WEBHOOK_ALLOWED_HOSTS` (see the module docstring)."""

    keywords: frozenset[str]
    networks: tuple[IPNetwork, ...]
    patterns: tuple[str, ...]

    @classmethod
    def parse(cls, value: str) -> HostPolicy:
        """Raises ValueError naming an entry that looks like a network but is not one."""
        keywords: set[str] = set()
        networks: list[IPNetwork] = []
        patterns: list[str] = []
        for entry in (part.strip().lower() for part in value.split(",")):
            if entry in KEYWORDS:
                keywords.add(entry)
            elif "/" in entry:
                try:
                    networks.append(ip_network(entry, strict=False))
                except ValueError:
                    raise ValueError(f"{entry!r} is not a network; write it as 10.0.0.0/8 or fd00::/8") from None
            elif (address := literal_address(entry)) is not None:
                networks.append(ip_network(address))
            elif entry:
                patterns.append(entry.rstrip("."))
        return cls(frozenset(keywords), tuple(networks), tuple(patterns))

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why a webhook to `host` may not connect to `address` (`host` itself, or what it resolved to), or None."""
        if ANY in self.keywords or any(fnmatchcase(host.lower().rstrip("."), p) for p in self.patterns):
            return None
        carried = embedded_ipv4(address) if isinstance(address, IPv6Address) else None
        if any(address in network or (carried is not None and carried in network) for network in self.networks):
            return None
        kind = denied_kind(address)
        if EXTERNAL in self.keywords if kind is None else _ALLOWED_BY.get(kind) in self.keywords:
            return None
        shown = f"{address} (IPv4 {carried})" if carried is not None else str(address)
        subject = f"{shown} is" if literal_address(host) is not None else f"{host} resolves to {shown},"
        what = f"{_article(kind)} {kind} address" if kind is not None else "an external address"
        return f"{subject} {what}; the operator may allow it with {SETTING}"


@lru_cache(maxsize=8)
def host_policy(value: str) -> HostPolicy:
    """`HostPolicy.parse(value)`, parsed once per distinct setting."""
    return HostPolicy.parse(value)


def url_refusal(url: str, policy: HostPolicy) -> str | None:
    """Why `url` cannot be a webhook, as far as that is known without DNS: it is no http(s) URL with a host, or
    its host is a literal address the policy denies. None when it may be tried."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "is not a valid URL; give an http:// or https:// URL"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "must be an http:// or https:// URL with a host"
    address = literal_address(parsed.host)
    return policy.refusal(parsed.host, address) if address is not None else None


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The addresses the system resolver gives `host` (in its order), as `connect` would have asked it."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: dict[IPAddress, None] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            found[ip_address(sockaddr[0])] = None
    return list(found)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only where `policy` allows: it resolves the URL's host once with
    `resolver`, refuses the connection (`Refused`) when any address it got is denied, and otherwise connects
    `network` (httpcore's own backend) to one of those addresses itself, never to the name, so a second answer
    of the name's DNS is never asked for. httpcore then starts TLS with the URL's host as the server name."""

    def __init__(
        self,
        policy: HostPolicy,
        resolver: Resolver = system_resolver,
        network: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self.resolver = resolver
        self.network = network or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.resolver(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took over {timeout:g} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        for address in addresses:
            if (why := self.policy.refusal(host, address)) is not None:
                raise Refused(why)
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await self.network.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def sleep(self, seconds: float) -> None:
        await self.network.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport over a connection pool whose connections `backend` opens. httpx takes no network
    backend of its own (as of 0.29), so the pool it builds is replaced by one that has ours; how requests, answers
    and errors cross between httpx and httpcore stays httpx's. Certificates are checked against certifi's
    authorities, or those of `SSL_CERT_FILE` / `SSL_CERT_DIR` when set (an operator's own, for internal
    receivers), as httpx does."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend, *, max_connections: int) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=max_connections,
            network_backend=backend,
        )


def webhook_client(
    policy: HostPolicy,
    *,
    connect_timeout: float,
    timeout: float,
    max_connections: int,
    resolver: Resolver = system_resolver,
    network: httpcore.AsyncNetworkBackend | None = None,
) -> httpx.AsyncClient:
    """An HTTP client for webhooks: connections only where `policy` allows, no redirects (a receiver's 3xx would
    send it anywhere), no proxy nor `.netrc` from the environment (a proxy would connect where no check is made),
    `connect_timeout` to connect and `timeout` for each read and write (the caller bounds a whole request)."""
    transport = GuardedTransport(GuardedBackend(policy, resolver, network), max_connections=max_connections)
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        follow_redirects=False,
        trust_env=False,
    )


class _Parts(typing.NamedTuple):
    head: str  # the scheme and `://`
    userinfo: str | None
    hostport: str
    path: str
    query: str | None
    fragment: str | None


def _split(url: str) -> _Parts:
    """`url`'s parts by its delimiters alone, so a URL no parser accepts is still split: the authority ends at
    the first `/`, `?` or `#` (where every parser ends it) and its userinfo at its last `@`, so whatever any
    parser could take for userinfo is in `userinfo`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = min((index for index in (rest.find(mark) for mark in "/?#") if index >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hostport = authority.rpartition("@")
    tail, hash_mark, fragment = tail.partition("#")
    path, question, query = tail.partition("?")
    return _Parts(
        scheme + sep,
        userinfo if at else None,
        hostport,
        path,
        query if question else None,
        fragment if hash_mark else None,
    )


def _masked(item: str) -> str:
    """A query item with its value hidden: `token=***`; a bare item is all value."""
    if "=" in item:
        return item.partition("=")[0] + "=***"
    return "***" if item else ""


def redact_url(url: str) -> str:
    """`url` as a log line or an error may show it: its userinfo, query values and fragment as `***`
    (`https://***@hooks.example/path?token=***`), the rest as given."""
    parts = _split(url)
    words = parts.head + ("***@" if parts.userinfo is not None else "") + parts.hostport + parts.path
    if parts.query is not None:
        words += "?" + "&".join(_masked(item) for item in parts.query.split("&"))
    if parts.fragment is not None:
        words += "#***"
    return words


_SHORTEST_SECRET = 4  # shorter values are no secret worth garbling a sentence for


def _basic_credentials(userinfo: str) -> str:
    """What a client sends for `userinfo` (`user:password`, or `user` alone) in `Authorization: Basic` (RFC 7617's
    base64 of user, colon, password in UTF-8), as httpx makes it from a URL's userinfo."""
    user, _, password = userinfo.partition(":")
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def redact(text: str, url: str) -> str:
    """`text` (an exception's message, a receiver's answer) with every secret of `url` in it, the userinfo, its
    user and password, each query value and the fragment, raw or percent-decoded, and the Basic credentials made of
    the userinfo (a receiver may quote the Authorization header it got), replaced by `***`."""
    parts = _split(url)
    secrets: set[str] = set()
    if parts.userinfo:
        secrets.update((parts.userinfo, *parts.userinfo.split(":")))
        secrets.update(_basic_credentials(userinfo) for userinfo in (parts.userinfo, unquote(parts.userinfo)))
    for item in (parts.query or "").split("&"):
        secrets.add(item.partition("=")[2] if "=" in item else item)
    if parts.fragment:
        secrets.add(parts.fragment)
    secrets |= {unquote(secret) for secret in secrets}
    for secret in sorted((s for s in secrets if len(s) >= _SHORTEST_SECRET), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
