"""An organization's SSH public keys. Only the OpenSSH one-line format is accepted, checked the way
`ssh-keygen` reads it: the key type, then a base64 blob whose first field repeats that type."""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dockyard.core.callers import Principal
from dockyard.db.models import SshKeyModel
from dockyard.errors import InvalidField
from dockyard.schemas.ssh_keys import CreateSshKeyRequest, SshKey
from dockyard.services import idempotency
from dockyard.services.tenancy import owned_row

KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
_FIELD = "publicKey"


def _blob_type(blob: bytes) -> str:
    """The first SSH wire-format string of the blob: a big-endian uint32 length, then that many bytes."""
    if len(blob) < 4:
        return ""
    (length,) = struct.unpack(">I", blob[:4])
    if length > len(blob) - 4:
        return ""
    return blob[4 : 4 + length].decode("ascii", errors="replace")


def parse_public_key(text: str) -> tuple[str, str]:
    """The key normalised to `<type> <base64> [comment]` and its fingerprint as `ssh-keygen -l` prints it
    (`SHA256:` and the unpadded base64 of the SHA-256 of the blob). Raises `InvalidField` on `publicKey`."""
    parts = text.strip().split(maxsplit=2)
    if len(parts) < 2 or "\n" in text.strip():
        raise InvalidField(_FIELD, "expected one OpenSSH public key line: '<type> <base64> [comment]' (a .pub file)")
    key_type, body = parts[0], parts[1]
    if key_type not in KEY_TYPES:
        raise InvalidField(_FIELD, f"key type {key_type[:40]!r} is not supported; use one of: {', '.join(KEY_TYPES)}")
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidField(_FIELD, "the key body is not valid base64; paste the whole .pub file line") from exc
    if _blob_type(blob) != key_type:
        raise InvalidField(_FIELD, f"the key body is not a {key_type} key; paste the whole .pub file line")
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return " ".join(parts), fingerprint


def to_wire(row: SshKeyModel) -> SshKey:
    return SshKey(
        id=row.id, name=row.name, public_key=row.public_key, fingerprint=row.fingerprint, created_at=row.created_at
    )


async def get_row(session: AsyncSession, principal: Principal, key_id: str) -> SshKeyModel:
    """The key if it is this organization's; another organization's is as missing as a wrong id."""
    return await owned_row(session, principal, SshKeyModel, key_id, "SSH key", "GET /api/v1/ssh-keys")


async def create(
    session: AsyncSession, principal: Principal, request: CreateSshKeyRequest, idempotency_key: str | None = None
) -> idempotency.Answer:
    """Record the key and answer `{"id"}`; once per Idempotency-Key."""

    async def add() -> dict[str, str]:
        public_key, fingerprint = parse_public_key(request.public_key)
        row = SshKeyModel(org_id=principal.org_id, name=request.name, public_key=public_key, fingerprint=fingerprint)
        session.add(row)
        await session.flush()
        return {"id": row.id}

    body = request.model_dump(mode="json", by_alias=True)
    answer = await idempotency.once(session, principal.org_id, idempotency_key, "POST /api/v1/ssh-keys", body, add)
    await session.commit()
    return answer


async def get(session: AsyncSession, principal: Principal, key_id: str) -> SshKey:
    return to_wire(await get_row(session, principal, key_id))


async def list_all(session: AsyncSession, principal: Principal) -> list[SshKey]:
    rows = await session.scalars(
        select(SshKeyModel)
        .where(SshKeyModel.org_id == principal.org_id)
        .order_by(SshKeyModel.created_at.desc(), SshKeyModel.id)
    )
    return [to_wire(row) for row in rows]


async def delete(session: AsyncSession, principal: Principal, key_id: str) -> None:
    """Containers already running keep the key they were given; new ones can no longer name it."""
    await session.delete(await get_row(session, principal, key_id))
    await session.commit()


async def check_owned(session: AsyncSession, principal: Principal, key_ids: list[str], field: str) -> None:
    """Every id names a key of this organization; else `InvalidField` on `field[i]`."""
    if not key_ids:
        return
    owned = set(
        await session.scalars(
            select(SshKeyModel.id).where(SshKeyModel.org_id == principal.org_id, SshKeyModel.id.in_(key_ids))
        )
    )
    for index, key_id in enumerate(key_ids):
        if key_id not in owned:
            raise InvalidField(f"{field}[{index}]", f"SSH key {key_id} not found; POST /api/v1/ssh-keys adds one")
