"""Where webhooks may go, judged on the address really connected to: the denied ranges in every spelling, the
operator's allow-list, DNS rebinding against the transport over real sockets, TLS checked on the URL's name while
the connection goes to the checked address, and URLs in words without their credentials."""

from __future__ import annotations

import base64
import datetime
import re
import ssl
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dockyard.outbound import (
    SETTING,
    HostPolicy,
    IPAddress,
    Refused,
    denied_kind,
    literal_address,
    redact,
    redact_url,
    url_refusal,
    webhook_client,
)

DEFAULT = HostPolicy.parse("external")
PUBLIC = "93.184.216.34"


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.1", "loopback"),
        ("2130706433", "loopback"),
        ("0x7f.1", "loopback"),
        ("0177.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:0:127.0.0.1", "loopback"),  # IPv4-translated
        ("64:ff9b::169.254.169.254", "cloud metadata"),  # NAT64
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("0.0.0.0", "unspecified"),
        ("0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "reserved"),
        ("2001:db8::1", "reserved"),
        ("2002:7f00:1::1", "reserved"),  # 6to4 of 127.0.0.1
        ("::7f00:1", "reserved"),  # IPv4-compatible, deprecated
        (PUBLIC, None),
        ("172.32.0.1", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:93.184.216.34", None),
    ],
)
def test_kinds_of_address_in_every_spelling(host: str, kind: str | None) -> None:
    address = literal_address(host)
    assert address is not None
    assert denied_kind(address) == kind
    refusal = DEFAULT.refusal(host, address)
    if kind is None:
        assert refusal is None
    else:
        assert refusal is not None
        assert f"{kind} address; the operator may allow it with {SETTING}" in refusal


def test_names_are_no_literal_address() -> None:
    for host in ("localhost", "hooks.example", "deadbeef", "1.2.3.4.5", "0x7f.1.example"):
        assert literal_address(host) is None


def test_allow_list_keywords_networks_and_patterns() -> None:
    policy = HostPolicy.parse(" loopback, 10.1.0.0/16 ,169.254.169.254, *.corp.example,")
    loopback, private = ip_address("127.0.0.1"), ip_address("10.1.2.3")
    assert policy.refusal("127.0.0.1", loopback) is None
    assert policy.refusal("10.1.2.3", private) is None
    assert policy.refusal("::ffff:10.1.2.3", ip_address("::ffff:10.1.2.3")) is None  # the IPv4 it carries
    assert policy.refusal("hooks.corp.example", ip_address("192.168.7.7")) is None  # the operator trusts the name
    assert policy.refusal("169.254.169.254", ip_address("169.254.169.254")) is None
    assert policy.refusal("x", ip_address("10.2.0.1")) == (
        f"x resolves to 10.2.0.1, a private address; the operator may allow it with {SETTING}"
    )
    # The list replaces the default: without `external`, the internet is closed too.
    assert policy.refusal("example.com", ip_address(PUBLIC)) == (
        f"example.com resolves to {PUBLIC}, an external address; the operator may allow it with {SETTING}"
    )
    private_ok = HostPolicy.parse("external,private")
    assert private_ok.refusal("h", ip_address("100.64.1.1")) is None
    assert private_ok.refusal("h", ip_address("127.0.0.1")) is not None
    assert private_ok.refusal("h", ip_address("169.254.169.254")) is not None  # metadata needs its own entry
    assert HostPolicy.parse("*").refusal("h", ip_address("127.0.0.1")) is None
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33' is not a network")):
        HostPolicy.parse("external,10.0.0.0/33")


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://127.0.0.1:8080/", "127.0.0.1 is a loopback address"),
        ("http://127.1:8080/", "127.0.0.1 is a loopback address"),
        ("http://2130706433/", "127.0.0.1 is a loopback address"),
        ("http://user:pw@[::ffff:7f00:1]:9/x", "::ffff:7f00:1 (IPv4 127.0.0.1) is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
        ("ftp://hooks.example/", "must be an http:// or https:// URL"),
        ("http:///path", "must be an http:// or https:// URL with a host"),
        ("https://hooks.example/done", None),
        ("http://localhost:8080/", None),  # a name: judged where it is connected to
    ],
)
def test_url_refusal_without_dns(url: str, refused: str | None) -> None:
    answer = url_refusal(url, DEFAULT)
    assert answer == refused if refused is None else answer is not None and answer.startswith(refused)


def test_redact_url_and_text() -> None:
    url = "https://user:pa55-s3cret@hooks.example/path?token=tok-s3cret&flag&x=#frag-s3cret"
    assert redact_url(url) == "https://***@hooks.example/path?token=***&***&x=***#***"
    assert redact_url("http://hooks.example/p") == "http://hooks.example/p"
    # Whatever any parser could take for userinfo is hidden: everything before the authority's last `@`.
    assert redact_url("http://a:b@c@hooks.example/x") == "http://***@hooks.example/x"
    echoed = "bad request to /path?token=tok-s3cret%21 from hook-user:pa55-s3cret (tok-s3cret!)"
    text = redact(echoed, "https://hook-user:pa55-s3cret@hooks.example/path?token=tok-s3cret%21")
    assert text == "bad request to /path?token=*** from *** (***)"


def sent_authorization(url: str) -> str:
    """The Authorization header an httpx client sends when POSTing to `url`, as the webhook client does."""
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        client.post(url)
    return seen[0]


def test_redact_hides_the_basic_credentials_made_of_the_userinfo() -> None:
    # As found by the log canary: a receiver's 500 quoting the Authorization header httpx made of the URL's
    # userinfo put the webhook's password, base64-encoded, in the log's "given up" line.
    url = "https://hook-user:pa55%40s3cret@hooks.example/path"
    sent = sent_authorization(url)
    assert sent == "Basic " + base64.b64encode(b"hook-user:pa55@s3cret").decode()
    assert redact(f"cannot take it from {sent}", url) == "cannot take it from Basic ***"
    token_only = "https://tok-s3cret@hooks.example/path"
    assert redact(sent_authorization(token_only), token_only) == "Basic ***"


class Receiver(BaseHTTPRequestHandler):
    """Records each request's Host header and answers 200."""

    hosts: list[str]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.hosts.append(self.headers["Host"])  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Listening(ThreadingHTTPServer):
    hosts: list[str]


@contextmanager
def listening(tls: ssl.SSLContext | None = None) -> Iterator[Listening]:
    """A real HTTP server on 127.0.0.1 (over TLS with `tls`) that records the Host of every request it gets."""
    server = Listening(("127.0.0.1", 0), Receiver)
    server.hosts = []
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Listening]:
    with listening() as server:
        yield server


def port_of(server: Listening) -> int:
    port: int = server.server_address[1]
    return port


class Answers:
    """A resolver injected into the transport: each call answers the next list, the last one again and again."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = [[ip_address(a) for a in answer] for answer in answers]
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


class Dialer(httpcore.AsyncNetworkBackend):
    """httpcore's own backend, recording every address it is asked to connect to; anything but loopback is
    refused here rather than dialled out of the test machine."""

    def __init__(self) -> None:
        self.real = httpcore.AnyIOBackend()
        self.dialled: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.dialled.append(host)
        if not ip_address(host).is_loopback:
            raise httpcore.ConnectError(f"{host} is not dialled from a test")
        return await self.real.connect_tcp(host, port, timeout=timeout, socket_options=socket_options)

    async def sleep(self, seconds: float) -> None:
        await self.real.sleep(seconds)


def client(policy: str, resolver: Answers, dialer: Dialer) -> httpx.AsyncClient:
    allowed = HostPolicy.parse(policy)
    return webhook_client(allowed, connect_timeout=2, timeout=5, max_connections=4, resolver=resolver, network=dialer)


async def test_a_name_resolving_to_loopback_is_refused_at_connect(receiver: Listening) -> None:
    resolver, dialer = Answers(["127.0.0.1"]), Dialer()
    async with client("external", resolver, dialer) as http:
        with pytest.raises(Refused) as refused:
            await http.post(f"http://inside.test:{port_of(receiver)}/hook", json={})
    assert str(refused.value) == (
        f"inside.test resolves to 127.0.0.1, a loopback address; the operator may allow it with {SETTING}"
    )
    assert (resolver.calls, dialer.dialled, receiver.hosts) == (["inside.test"], [], [])


async def test_one_denied_address_among_public_ones_refuses_the_name(receiver: Listening) -> None:
    resolver, dialer = Answers([PUBLIC, "::1"]), Dialer()
    async with client("external", resolver, dialer) as http:
        with pytest.raises(Refused, match=re.escape("mixed.test resolves to ::1, a loopback address")):
            await http.post(f"http://mixed.test:{port_of(receiver)}/hook", json={})
    assert (dialer.dialled, receiver.hosts) == ([], [])


async def test_rebinding_cannot_make_the_transport_connect_to_loopback(receiver: Listening) -> None:
    """The name answers a public address first and loopback after: the transport connects to the address it
    checked, never to the name, so the second answer is judged like the first and nothing reaches loopback."""
    resolver, dialer = Answers([PUBLIC], ["127.0.0.1"]), Dialer()
    url = f"http://rebind.test:{port_of(receiver)}/hook"
    async with client("external", resolver, dialer) as http:
        with pytest.raises(httpx.ConnectError, match=f"{PUBLIC} is not dialled"):
            await http.post(url, json={})
        assert (resolver.calls, dialer.dialled) == (["rebind.test"], [PUBLIC])  # resolved once, dialled the address
        with pytest.raises(Refused, match=re.escape("rebind.test resolves to 127.0.0.1, a loopback address")):
            await http.post(url, json={})
    assert dialer.dialled == [PUBLIC]
    assert receiver.hosts == []


async def test_allowed_loopback_is_reached_with_the_host_header_of_the_url(receiver: Listening) -> None:
    resolver, dialer = Answers(["127.0.0.1"]), Dialer()
    url = f"http://hooks.test:{port_of(receiver)}/hook"
    async with client("external,loopback", resolver, dialer) as http:
        answer = await http.post(url, json={"id": "j1"})
    assert answer.status_code == 200
    assert dialer.dialled == ["127.0.0.1"]
    assert receiver.hosts == [f"hooks.test:{port_of(receiver)}"]


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for `hooks.test` only (no IP address): the CA's file, the leaf's, its key's."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Dockyard test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),  # cert and CRL signing
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.test")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.test")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


async def test_tls_is_checked_on_the_url_name_while_the_checked_address_is_dialled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The certificate names `hooks.test` and no address: the connection goes to 127.0.0.1, and the handshake
    still asks for `hooks.test` (SNI) and verifies the certificate against it."""
    ca, leaf, key = _certificates(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(leaf, key)
    names: list[str | None] = []
    tls.sni_callback = lambda _socket, name, _context: names.append(name)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the operator's CA, as for an internal receiver
    resolver, dialer = Answers(["127.0.0.1"]), Dialer()
    with listening(tls) as receiver:
        port = port_of(receiver)
        async with client("loopback", resolver, dialer) as http:
            answer = await http.post(f"https://hooks.test:{port}/hook", json={})
            assert answer.status_code == 200
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.post(f"https://127.0.0.1:{port}/hook", json={})  # the address is not the name
    assert names[0] == "hooks.test"
    assert receiver.hosts == [f"hooks.test:{port}"]
    assert dialer.dialled == ["127.0.0.1", "127.0.0.1"]
