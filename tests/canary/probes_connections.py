"""The canary's probes of the connection bounds, on raw sockets with the user's key in the request head: a
connection that sends nothing, one left idle after an answer, a head trickled past the header timeout (slowloris),
a body that stalls, and a head no HTTP parser takes."""

from __future__ import annotations

from tests.canary.harness import Canary, probe


def head(canary: Canary, method: str = "GET", path: str = "/api/v1/containers", *extra: str) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{canary.port}",
        f"Authorization: Bearer {canary.secrets['user key']}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


@probe
def an_idle_connection(canary: Canary) -> None:
    assert canary.raw() == b""  # closed after the header timeout, answered nothing
    answered = canary.raw(head(canary) + b"\r\n")  # answered, then closed once idle past the keep-alive timeout
    assert answered.startswith(b"HTTP/1.1 200 ")


@probe
def a_slowloris_head(canary: Canary) -> None:
    trickle = [head(canary), *(f"X-Part-{n}: {canary.secrets['user key']}\r\n".encode() for n in range(10))]
    answered = canary.raw(*trickle, pause=0.3)
    assert answered.startswith(b"HTTP/1.1 408 "), answered[:200]


@probe
def a_stalled_body(canary: Canary) -> None:
    start = head(canary, "POST", "/api/v1/templates", "Content-Type: application/json", "Content-Length: 500")
    answered = canary.raw(start + b"\r\n" + f'{{"name": "{canary.secrets["user key"]}'.encode())
    assert answered.startswith(b"HTTP/1.1 408 "), answered[:200]


@probe
def a_malformed_head(canary: Canary) -> None:
    answered = canary.raw(head(canary, "GET", "/api/v1/containers", "Broken header line") + b"\r\n")
    assert answered.startswith(b"HTTP/1.1 400 "), answered[:200]
