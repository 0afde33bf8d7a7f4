"""Who calls Dockyard, and the key a request presents to say so."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """Who is calling: an organization's member through one of its keys, or the operator."""

    org_id: str
    member_id: str
    key_id: str
    is_admin: bool = False


def presented_key(authorization: str | None) -> str | None:
    """The key an `Authorization` header carries, `Bearer <key>` or the bare key (the PPIO and RunPod clients and
    worker SDKs send it bare); None when it carries none. Every door takes a key the same way: the API, the job
    API, the sync gateway and the worker webhooks."""
    value = (authorization or "").strip()
    scheme, _, rest = value.partition(" ")
    key = rest.strip() if scheme.lower() == "bearer" else value
    return key if key and " " not in key else None
